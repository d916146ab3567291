"""`minivit gradcheck`: a table per check, every model the presets train through the engine
and the fast path, float32's looser marks explained, a wrong gradient failing loudly.
(What the checks compute: tests/engine/test_gradcheck.py, tests/fast/test_check.py.)"""

import re

from minivit import cli
from minivit.engine import gradcheck


def test_gradcheck_command_prints_a_table(capsys):
    assert cli.main(["gradcheck", "--layer", "attention"]) == 0
    out = capsys.readouterr().out
    assert "attention  (float64, eps=3e-06, pass if rel err <= 1e-07)" in out
    header = next(l for l in out.splitlines() if l.startswith("tensor"))
    assert header.split() == ["tensor", "shape", "checked", "max", "abs", "err", "rel", "err", "result"]
    row = next(l for l in out.splitlines() if l.startswith("in_proj_weight"))
    assert row.split()[1:3] == ["24x8", "192"] and row.split()[-1] == "pass"
    assert out.strip().endswith("1 passed, 0 failed")


def test_gradcheck_model_checks_every_model_through_both_paths(backend, capsys):
    """--model: each of gradcheck.MODELS through the engine and the fast path, then the fast
    path's own checks (the class-token-only block; on NumPy the blocked GELU)."""
    assert cli.main(["gradcheck", "--model", "--max-checks", "3", "--backend", backend]) == 0
    out = capsys.readouterr().out
    for name in gradcheck.MODELS:
        assert f"model {name}, reference:" in out and f"model {name}, fast:" in out
    assert "model vit, reference: SimpleViT" in out and "blocks.1.mlp.2.weight" in out
    for tensor in ("stem.conv.weight", "stem.conv2.weight", "input                          2x3x4x4"):
        assert tensor in out
    assert "block_cls_only (fast path)" in out
    assert ("blocked GELU (float32, 262,144 elements" in out) == (backend == "numpy")
    checks = 2 * len(gradcheck.MODELS) + (2 if backend == "numpy" else 1)
    assert out.strip().endswith(f"{checks} passed, 0 failed")


def test_gradcheck_in_float32_passes_and_explains_its_looser_marks(capsys):
    assert cli.main(["gradcheck", "--model", "--dtype", "float32", "--max-checks", "20"]) == 0
    capsys.readouterr()
    assert cli.main(["gradcheck", "--layer", "gelu", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "Why float32 needs looser marks" in out
    assert re.search(r"in float32 with eps = 1e-6 the worst relative error is \d\.\de-0[0-2]", out)


def test_gradcheck_command_fails_loudly_on_a_wrong_gradient(capsys, monkeypatch):
    from minivit.engine import layers
    real = layers.softmax_backward
    monkeypatch.setattr(layers, "softmax_backward", lambda da, a: real(da, a) * 1.01)
    assert cli.main(["gradcheck", "--layer", "softmax"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "0 passed, 1 failed: softmax" in out
