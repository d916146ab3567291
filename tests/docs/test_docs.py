"""The lessons are the code: every code line docs/gradients.md quotes is a line of the file
it names, every function it links to exists, every layer has its check command, and each
statement the docs make about the code holds; every file a doc or docstring names exists."""

import inspect
import os
import re

import numpy as np
import pytest

import minivit
from minivit.engine import gradcheck, layers, transformer
from minivit.fast import kernels

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def read(path):
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


DOC = read(os.path.join("docs", "gradients.md"))
QUOTE = re.compile(r"```python (minivit/[\w/]+\.py)\n(.*?)```", re.S)


def normal(line):
    return " ".join(line.split())


def code_lines(path):
    """Each line of a file, whitespace-normalized, with and without its trailing comment."""
    lines = set()
    for line in read(path).splitlines():
        lines.add(normal(line))
        lines.add(normal(line.split("  #")[0]))
    return lines


def assert_quotes_the_code(doc, at_least):
    """Every line of every ```python FILE block of docs/<doc> is a line of FILE."""
    blocks = QUOTE.findall(read(os.path.join("docs", doc)))
    assert len(blocks) >= at_least
    for path, body in blocks:
        lines = code_lines(path)
        for line in body.splitlines():
            if line.strip():
                assert normal(line) in lines, f"docs/{doc} quotes a line {path} does not have:\n{line}"


def test_every_quoted_code_line_is_a_line_of_the_file_it_names():
    assert_quotes_the_code("gradients.md", at_least=20)


def test_the_guide_to_adding_a_layer_quotes_the_code_as_it_is():
    """docs/adding-a-layer.md says every block it shows is the code as it is."""
    assert_quotes_the_code("adding-a-layer.md", at_least=10)


def test_docs_link_to_real_functions_and_real_checks():
    doc = DOC
    links = re.findall(r"\[`([\w.]+)`\]\(\.\./minivit/([\w/]+)\.py\)", doc)
    assert len(links) >= 25
    for name, path in links:
        module = __import__("minivit." + path.replace("/", "."), fromlist=["x"])
        # a name in the linked file ("layernorm_forward"), or one with its package
        # ("fast.Muon"), which the linked file must define
        obj = module if hasattr(module, name.split(".")[0]) else minivit
        for part in name.split("."):
            obj = getattr(obj, part)                 # raises if the doc names a missing function
        if obj is not module and hasattr(obj, "__module__"):
            assert obj.__module__ == module.__name__, f"[`{name}`] links to {path}.py, defined in {obj.__module__}"
    checked = set(re.findall(r"minivit gradcheck --layer (\w+)", doc))
    assert checked == set(gradcheck.LAYERS)          # every layer has its check command
    assert "minivit gradcheck --model" in doc
    sections = re.split(r"\n## ", doc)[2:]           # after the notation
    assert all("Check: `" in s for s in sections)    # each derivation ends with its command


def test_the_lines_that_were_misquoted_are_now_quoted_from_the_code():
    quoted = {normal(line) for _, body in QUOTE.findall(DOC) for line in body.splitlines()}
    assert "- xhat * (g * xhat).mean(axis=-1, keepdims=True))" in quoted        # LayerNorm's dx
    assert any(l.startswith("dxpad[:, :, i:i + s * Ho:s, j:j + s * Wo:s] +=") for l in quoted)  # col2im
    layers_code = code_lines("minivit/engine/layers.py")
    for wrong in ("dx = rstd * (g - g.mean(-1) - xhat * (g * xhat).mean(-1))",
                  "dxpad[:, :, i::s, j::s] += dcols[..., i, j]"):
        assert normal(wrong) not in layers_code


def test_no_code_statement_is_quoted_outside_a_checked_block():
    """Inline code and \\texttt{} may name things, but a statement (x = ..., x += ...) a
    student could copy must sit in a block the test above checks."""
    prose = QUOTE.sub("", DOC)
    spans = re.findall(r"`([^`\n]+)`", prose) + re.findall(r"\\texttt\{([^}]*)\}", prose)
    statements = [s for s in spans if re.search(r"\s[-+*/]?=\s", s)]
    assert statements == []


def test_the_misquoted_lines_were_wrong():
    """What the old LayerNorm line did: an error on [B, N, D], silently wrong numbers
    when there are as many rows as channels."""
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((6, 6)), rng.standard_normal(6)
    _, cache = layers.layernorm_forward(x, w, np.zeros(6))
    dy = rng.standard_normal((6, 6))
    g, xhat, rstd = dy * w, cache.xhat, cache.rstd
    old = rstd * (g - g.mean(-1) - xhat * (g * xhat).mean(-1))
    assert np.abs(old - layers.layernorm_backward(dy, cache)[0]).max() > 0.1


def test_the_float32_gelu_error_the_docs_state():
    """normal_cdf's formula errs below 1.5e-7 in exact arithmetic; in float32 it reaches
    3.6e-7 (every float32 x in [0.025, 0.045], around the worst). The docs say 4e-7, and
    mention 1.5e-7 only as the exact-arithmetic bound."""
    from scipy.special import ndtr
    lo, hi = np.float32(0.025).view(np.int32), np.float32(0.045).view(np.int32)
    xs = np.arange(lo, hi, dtype=np.int32).view(np.float32)
    err = np.abs(kernels.normal_cdf(xs, np.exp(-0.5 * xs * xs)).astype(np.float64) - ndtr(xs.astype(np.float64)))
    assert 3.5e-7 < err.max() < 4e-7
    kernels_doc = read("minivit/fast/kernels.py")
    assert "4\\cdot 10^{-7}" in DOC and "4e-7" in kernels_doc
    for text, bound in ((DOC, r"1\.5\s*\\cdot\s*10\^\{-7\}"), (kernels_doc, r"1\.5e-7")):
        for m in re.finditer(bound, text):
            assert "exact arithmetic" in text[m.end():m.end() + 80], text[m.start() - 80:m.end() + 80]


def test_the_head_normalizes_after_pooling_as_the_docs_say():
    section = DOC.split("## 10. The head")[1].split("\n## ")[0]
    assert "after* the pooling" in section
    assert "final norm is applied" not in DOC          # it was: "to the class token only"
    model = minivit.ViT(img_size=8, patch_size=4, embed_dim=8, depth=1, num_heads=2, num_classes=3,
                        pool="mean", dtype="float64")
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8))
    h, _ = model.embed_forward(x)
    h, _ = transformer.block_forward(h, model.block_params(0), 2)
    p = model.params
    norm = lambda t: layers.layernorm_forward(t, p["norm.weight"], p["norm.bias"])[0]     # noqa: E731
    head = lambda t: t @ p["head.weight"].T + p["head.bias"]                             # noqa: E731
    np.testing.assert_allclose(model.forward(x), head(norm(h[:, 1:].mean(axis=1))), rtol=1e-12)
    assert np.abs(model.forward(x) - head(norm(h[:, 1:]).mean(axis=1))).max() > 1e-3


def test_weight_decay_reaches_what_the_docs_say():
    from minivit.config import TrainConfig
    from minivit.run import decay_groups, make_optimizer
    model = minivit.ViT(img_size=8, patch_size=2, embed_dim=8, depth=1, num_heads=2, stem_channels=4)
    decayed = {p.name for p in decay_groups(model, 0.05)[0]["params"]}
    assert {"stem.conv.weight", "patch_embed.proj.weight"} <= decayed          # the conv kernels
    assert decayed == {n for n, w in model.state_dict().items() if w.ndim >= 2 and not n.startswith("vit_embed.")}
    adam = make_optimizer(TrainConfig(optimizer="adam", weight_decay=0.1), model)
    assert {g["weight_decay"] for g in adam.param_groups} == {0.1}             # every parameter
    section = DOC.split("## 13. Adam and AdamW")[1]
    assert "the conv kernels" in section and "give every parameter this L2 term" in section


def test_the_kernel_equals_stride_claim_names_the_test_that_makes_it():
    import test_layers                      # tests/engine/test_layers.py
    source = inspect.getsource(test_layers.test_conv2d_with_kernel_equal_to_stride_is_the_patch_embedding)
    assert "patch_embed_backward" in source and "conv2d_backward" in source
    assert "`patch_embed_forward` / `patch_embed_backward`, forward and backward" in DOC


def test_one_meaning_per_letter():
    table = DOC.split("## Notation")[1].split("\n## ")[0]
    rows = [r.split("|")[1].strip() for r in table.splitlines() if r.startswith("| $")]
    symbols = [s.strip() for row in rows for s in re.findall(r"\$([^$]+)\$", row) for s in s.split(",")]
    assert len(symbols) == len(set(symbols)), symbols
    for letter in ("G", "\\epsilon", "H", "F", "S"):
        assert symbols.count(letter) == 1
    assert "\\varepsilon" not in DOC                   # label smoothing is tau
    assert not re.search(r"\$G\s*\\times", DOC)        # the grid is Gamma
    assert "stem_channels=S" in DOC and not re.search(r"\bS_i\b", DOC)


@pytest.mark.parametrize("path", ["README.md", "docs", "minivit", "examples", "benchmarks"])
def test_every_file_the_docs_and_docstrings_name_exists(path):
    files = [path] if path.endswith(".md") else [
        os.path.join(path, n) for n in sorted(os.listdir(os.path.join(ROOT, path))) if n.endswith((".py", ".md"))]
    for name in files:
        text = read(name)
        for ref in re.findall(r"\b((?:benchmarks|examples|tests|docs|minivit|data)/[\w/.-]+\.(?:py|md|ipynb|npz))", text):
            assert os.path.exists(os.path.join(ROOT, ref)), f"{name} names {ref}, which does not exist"


def test_no_text_file_hides_a_control_character():
    """A formula written through an escaping layer can lose a backslash: "\\bar x" becomes a
    backspace and "ar x". Every doc, module and script is plain text (tabs and newlines)."""
    paths = ["README.md", "CHANGELOG.md"] + [
        os.path.relpath(os.path.join(folder, f), ROOT)
        for d in ("docs", "minivit", "benchmarks", "examples", "tests")
        for folder, _, names in sorted(os.walk(os.path.join(ROOT, d)))
        for f in sorted(names) if f.endswith((".md", ".py", ".ipynb"))]
    for path in paths:
        bad = re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", read(path))
        assert bad is None, f"{path}: control character {bad.group()!r} at offset {bad.start()}"
