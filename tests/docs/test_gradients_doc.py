"""docs/gradients.md as the course's reading companion: one meaning per symbol, every
quoted block from one function, the core in the exercises' order and free of the fast
path, the appendix after it, and the gradient check's numbers those of gradcheck.py.

Each check is a function of the page's text that returns what is wrong (an empty list
when nothing is), so test_the_checks_catch_what_a_students_trial_found can run the same
checks on a page with the faults the trial found and see each one caught.
"""

import ast
import os
import re

from minivit.engine import gradcheck

from test_docs import DOC, QUOTE, ROOT, read  # noqa: F401  (the page and its quotes, read once)

# ----------------------------------------------------------------- symbols in formulas

GREEK = set("""alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa
lambda mu nu xi omicron pi varpi rho varrho sigma varsigma tau upsilon phi varphi chi psi
omega Gamma Delta Theta Lambda Xi Pi Sigma Upsilon Phi Psi Omega ell nabla""".split())
# upright text is a name of the code or a function (\mathrm{cls}, \mathrm{LN}), not a symbol
NAMES = re.compile(r"\\(?:mathrm|text|texttt|operatorname|mathbb|mathbf)\s*\{[^{}]*\}")
DECORATED = re.compile(r"\\(hat|bar|tilde)\s*\{?\s*(\\[A-Za-z]+|[A-Za-z])\s*\}?")


def math_spans(doc):
    """The formulas of a page: $$...$$ and $...$, outside code blocks and code spans."""
    text = re.sub(r"```.*?```", " ", doc, flags=re.S)
    text = re.sub(r"`[^`\n]*`", " ", text)
    spans = re.findall(r"\$\$(.+?)\$\$", text, flags=re.S)
    text = re.sub(r"\$\$(.+?)\$\$", " ", text, flags=re.S)
    return spans + re.findall(r"\$([^$]+)\$", text)


def symbols(formula):
    """The symbols of one formula: each Latin letter outside upright text (so `dx` is two
    symbols, and the page writes the gradient's prefix upright, \\mathrm{d}), each Greek
    letter, and decorated letters (\\hat x, \\bar x, \\tilde\\nabla) as symbols of their own."""
    found = []
    s = NAMES.sub(" ", formula)
    s = re.sub(r"\\(?:begin|end)\s*\{\w*\}", " ", s)

    def decorated(m):
        found.append(f"\\{m.group(1)} {m.group(2)}")
        return " "
    s = DECORATED.sub(decorated, s)

    def command(m):
        if m.group(1) in GREEK:
            found.append("\\" + m.group(1))
        return " "
    s = re.sub(r"\\([A-Za-z]+)", command, s)
    s = re.sub(r"\\.", " ", s)
    return found + re.findall(r"[A-Za-z]", s)


def notation_rows(doc):
    """[(symbols of the row's first column, what the row says it means)]."""
    table = doc.split("## Notation", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in table.splitlines():
        if line.startswith("| $"):
            cells = line.split("|")
            syms = [t for m in math_spans(cells[1]) for t in symbols(m)]
            rows.append((syms, cells[2]))
    return rows


def notation_problems(doc):
    rows = notation_rows(doc)
    problems = []
    owner = {}
    for i, (syms, meaning) in enumerate(rows):
        for sym in syms:
            if owner.setdefault(sym, i) != i:
                problems.append(f"{sym} has two rows in the notation table: "
                                f"{rows[owner[sym]][1].strip()!r} and {meaning.strip()!r}")
    used = {}
    for formula in math_spans(doc):
        for sym in symbols(formula):
            used.setdefault(sym, formula.strip()[:60])
    for sym, where in sorted(used.items()):
        if sym not in owner:
            problems.append(f"{sym} is used (in ${where}$) but is not in the notation table")
    # the italic d is the head width: a gradient's prefix is the upright \mathrm{d}
    prefix = re.compile(r"(?<![\\A-Za-z])d(?=[A-Za-z]|\\(?:hat|bar|tilde|%s)\b)" % "|".join(GREEK))
    for formula in math_spans(doc):
        if prefix.search(NAMES.sub(" ", formula)):
            problems.append(f"an italic d prefixes a symbol in ${formula.strip()[:60]}$: "
                            f"write the gradient as \\mathrm{{d}}")
    return problems


# The collisions a student's trial found, each meaning now with a row of its own: the
# row whose meaning has the words holds this symbol, and no other row has the words.
MEANINGS = {
    "attention scores": "s",                  # s was a conv's stride too
    "conv stem's channels": "S",              # S was also a sum of exponentials, singular values
    "softmax's denominator": "Z",
    "singular values": "\\Sigma",
    "patch side": "p",                        # p was a token's index in sequence pooling too
    "a token's index": "n",
    "tanh": "t",                              # t was also the shifted logits
    "images in a batch": "B",                 # B was Muon's momentum buffer too
    "muon's momentum buffer": "Q",
    "a row's mean": "\\mu",                   # mu was Muon's momentum too
    "the circle's constant": "\\pi",          # pi was the class probabilities too
    "a gradient check's random upstream gradient": "G",   # G was a stack of matrices too
    "logits": "z",                            # z was the head's normalized row too
}


def meaning_problems(doc):
    rows = notation_rows(doc)
    problems = []
    for words, sym in MEANINGS.items():
        having = [syms for syms, meaning in rows if words in meaning.lower()]
        if len(having) != 1 or sym not in having[0]:
            problems.append(f"the notation table should have one row for {words!r}, with {sym}: "
                            f"found {having}")
    return problems


def test_every_symbol_of_every_formula_is_in_the_notation_table_once():
    assert notation_problems(DOC) == []


def test_each_meaning_the_trial_found_shared_has_its_own_symbol():
    assert meaning_problems(DOC) == []


# ----------------------------------------------------------------------- quoted blocks

def functions(path):
    """Every function and method of a file: (name, its source lines)."""
    source = read(path)
    lines = source.splitlines()
    return [(node.name, lines[node.lineno - 1:node.end_lineno])
            for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def normal(line):
    return " ".join(line.split())


def in_order(block, body):
    """True when the block's lines are lines of body, in body's order (gaps allowed)."""
    it = iter(body)
    for line in block:
        if not any(line in (normal(b), normal(b.split("  #")[0])) for b in it):
            return False
    return True


def quote_problems(doc):
    problems = []
    for path, body in QUOTE.findall(doc):
        block = [normal(line) for line in body.splitlines() if line.strip()]
        if not any(in_order(block, lines) for _, lines in functions(path)):
            problems.append(f"a block quoting {path} is not the lines of one function in "
                            f"order:\n{body}")
    return problems


def test_every_quoted_block_is_lines_of_one_function_in_order():
    assert quote_problems(DOC) == []


# ------------------------------------------------------- the core, then the appendix

HEADING = re.compile(r"^(##|###) (\d+b?|[A-Z])\. ", re.M)
CORE = ["0", "1", "2", "2b", "3", "4", "4b", "5", "6", "6b", "7", "8", "9", "10", "11", "12", "13"]
# the course's exercises in order, and the section each one starts
EXERCISES = [("1", "linear_backward"), ("2", "patch_embed_backward"),
             ("3", "token_embed_backward"), ("4", "layernorm_backward"),
             ("5", "softmax_backward"), ("6", "sdpa_backward"), ("6b", "attention_backward"),
             ("7", "gelu_backward"), ("8", "mlp_backward"), ("9", "block_backward"),
             ("10", "head_backward"), ("11", "cross_entropy"), ("13", "adam_update")]
OPTIONAL = {"2b": "conv2d_backward", "4b": "rmsnorm_backward"}


def sections(doc):
    """{number or letter: the section's text, up to the next numbered or lettered heading}"""
    marks = list(HEADING.finditer(doc))
    return {m.group(2): doc[m.end():marks[k + 1].start() if k + 1 < len(marks) else len(doc)]
            for k, m in enumerate(marks)}, [m.group(2) for m in marks]


def structure_problems(doc):
    found, order = sections(doc)
    problems = []
    core = [s for s in order if not s.isalpha()]
    appendix = [s for s in order if s.isalpha()]
    if core != CORE:
        problems.append(f"the core's sections are {core}, not {CORE}")
    if appendix != [chr(ord("A") + k) for k in range(len(appendix))] or not appendix:
        problems.append(f"the appendix's sections are {appendix}, not A, B, C, ...")
    if appendix and order.index(appendix[0]) != len(core):
        problems.append("an appendix section comes before the end of the core")
    exercise = re.compile(r"\A[^\n]*\n+Exercise(?: \d+)?(?: \(optional\))?: (none|`(\w+)`)")
    for number in CORE:
        m = exercise.match(found.get(number, ""))
        if not m:
            problems.append(f"section {number} does not start by naming its exercise")
            continue
        want = dict(EXERCISES).get(number) or OPTIONAL.get(number)
        if want and m.group(2) != want:
            problems.append(f"section {number} starts with exercise {m.group(2)}, not {want}")
    for number in CORE:                       # the core reads without the fast path
        text = found.get(number, "")
        if "```python minivit/fast/" in text or "](../minivit/fast/" in text:
            problems.append(f"section {number} quotes or links the fast path: the appendix's")
    return problems


def test_the_core_follows_the_exercises_and_the_appendix_comes_after_it():
    assert structure_problems(DOC) == []


def test_the_mlp_and_the_optimizers_quote_their_code():
    found, _ = sections(DOC)

    def quoted(number):
        return {normal(line.split("  #")[0]) for _, body in QUOTE.findall(found[number])
                for line in body.splitlines()}
    assert "dh = cache.gelu_backward(dg, cache.gelu)" in quoted("8")
    assert "g, cg = gelu_fwd(h)" in quoted("8")
    adam = quoted("13")
    assert "w -= xp.where(ok, step_size * m / (xp.sqrt(v) / bias_correction2_sqrt + eps), 0.0)" in adam
    assert "w -= xp.where(ok, lr * (decay * w), 0.0)" in adam            # adamw_update
    assert "step_size = self.lr / (1.0 - b1 ** self.t)" in adam          # Adam.step
    assert "bc2 = math.sqrt(1.0 - b2 ** self.t)" in adam


def test_layernorm_defines_the_mean_s_derivative_where_it_first_uses_it():
    found, _ = sections(DOC)
    first = found["4"].index(r"\frac{\partial \mu}{\partial x_i}")
    assert re.match(r"\\frac\{\\partial \\mu\}\{\\partial x_i\}\s*=\s*\\frac\{?1\}?\{?D\}?",
                    found["4"][first:]), found["4"][first - 200:first + 100]


def test_the_jacobians_are_derived():
    found, _ = sections(DOC)
    assert "quotient rule" in found["5"]
    assert r"\frac{\partial \log a_j}{\partial z_i}" in found["11"]


# ---------------------------------------------------------- the gradient check's numbers

def test_the_gradient_checks_numbers_are_gradchecks():
    """The step and the marks section 0 states are gradcheck.TOLERANCES, and the errors
    it says correct code gives are what the layer checks give."""
    assert gradcheck.TOLERANCES == {"float64": (3e-6, 1e-7), "float32": (3e-3, 2e-2)}
    found, _ = sections(DOC)
    section = " ".join(found["0"].split())
    for stated in (r"\Delta = 3 \cdot 10^{-6}", r"3 \cdot 10^{-3}", r"E \le 10^{-7}",
                   r"E \le 2 \cdot 10^{-2}"):
        assert stated in section
    # "from about 7e-11 to 5e-9" (float64) and "from about 5e-5 to 3e-3" (float32)
    for dtype, lo, hi, text in (("float64", 7e-11, 5e-9, r"$7 \cdot 10^{-11}$ to $5 \cdot 10^{-9}$"),
                                ("float32", 5e-5, 3e-3, r"$5 \cdot 10^{-5}$ to $3 \cdot 10^{-3}$")):
        assert text in section
        errs = [gradcheck.check_layer(name, dtype=dtype).max_rel_err for name in gradcheck.LAYERS]
        assert lo / 3 < min(errs) < lo * 3 and hi / 3 < max(errs) <= hi, (dtype, min(errs), max(errs))


# ------------------------------------------------------------- the checks can fail

OLD_FAULTS = r"""# A page

## Notation

| symbol | means | in the code |
|---|---|---|
| $\kappa$, $s$ | a conv's kernel side and stride | `k`, `stride` |
| $S$ | the conv stem's channels | `stem_channels` |

## 5. Softmax

$$a_i = \frac{e^{s_i - \max s}}{\sum_j e^{s_j - \max s}}, \qquad dx_{mi} = S$$

```python minivit/engine/layers.py
    e = xp.exp(s - s.max(axis=-1, keepdims=True))
    a = e / e.sum(axis=-1, keepdims=True)
    return a * (da - (da * a).sum(axis=-1, keepdims=True))
```
"""


def test_the_checks_catch_what_a_students_trial_found():
    """Scores written s like the stride, letters not in the table, a block splicing two
    functions, sections out of order: each check finds its fault on such a page."""
    problems = notation_problems(OLD_FAULTS)
    assert any(p.startswith("a is used") for p in problems)           # a softmax's output
    assert any(p.startswith("d is used") for p in problems)           # `dx` as two letters
    assert any(p.startswith("an italic d prefixes") for p in problems)
    assert any("'attention scores'" in p for p in meaning_problems(OLD_FAULTS))
    assert quote_problems(OLD_FAULTS)                                 # forward + backward spliced
    assert structure_problems(OLD_FAULTS)
    duplicate = OLD_FAULTS.replace("| $S$ |", "| $s$ |")
    assert any("two rows" in p for p in notation_problems(duplicate))


# ------------------------------------------------------------- links into the page

def slug(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_into_the_page_names_one_of_its_headings():
    anchors = {slug(h) for h in re.findall(r"^#+ (.*)$", DOC, re.M)}
    docs = [os.path.join("docs", n) for n in sorted(os.listdir(os.path.join(ROOT, "docs")))
            if n.endswith(".md")] + ["README.md"]
    links = [(path, anchor) for path in docs
             for anchor in re.findall(r"gradients\.md#([\w-]+)", read(path))]
    assert links
    for path, anchor in links:
        assert anchor in anchors, f"{path} links to gradients.md#{anchor}, which is no heading"
