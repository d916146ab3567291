"""`minivit selftest`: the checks a machine runs on itself, NumPy's side and the GPU's (the
strict stand-in here), a verdict at the end, and a wrong gradient failing it."""

from minivit import cli


def test_selftest_on_numpy_says_why_the_gpu_side_was_skipped(capsys, monkeypatch):
    from minivit.engine import backend
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_cupy_error", "CuPy is not installed (test).")
    assert cli.main(["selftest", "--backend", "auto"]) == 0
    out = capsys.readouterr().out
    assert "GPU side skipped: CuPy is not installed (test)." in out
    assert "pass  gradcheck attention" in out and "pass  gradcheck fast path" in out
    assert "step time: default ViT, batch 80" in out and " 0 failed" in out


def test_selftest_on_the_cupy_stand_in_compares_with_numpy(cupy_strict_module, capsys):
    assert cli.main(["selftest", "--backend", "cupy"]) == 0
    out = capsys.readouterr().out
    assert "cupy:" in out and "FAIL" not in out
    for line in ("pass  3 float64 training steps = NumPy's",
                 "pass  3 float32 steps = NumPy's (AdamW, EMA, clipping, drop path)",
                 "pass  3 float32 steps = NumPy's (conv stem)",
                 "pass  3 float32 steps = NumPy's (low-resolution batch)",
                 "pass  3 float32 steps = NumPy's (Muon)",
                 "pass  loader, augmentation and regularizers = NumPy's",
                 "(it compiles the GPU kernels), then"):
        assert line in out, line
    assert out.strip().splitlines()[-1] == "verdict: every check passed on numpy and cupy"


def test_selftest_ends_with_a_verdict_when_a_gpu_check_raises(cupy_strict_module, capsys, monkeypatch):
    from minivit import selftest

    def broken(backend):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    monkeypatch.setattr(selftest, "_batches", broken)
    monkeypatch.setattr(selftest, "_step_times", lambda backend: (1.0, 0.5))
    monkeypatch.setattr(selftest.gradcheck, "LAYERS", {})          # keep the test short
    assert cli.main(["selftest", "--backend", "cupy"]) == 1
    out = capsys.readouterr().out
    assert ("FAIL  loader, augmentation and regularizers = NumPy's: raised RuntimeError: CUDA error: "
            "an illegal memory access was encountered") in out
    assert out.strip().splitlines()[-1].startswith("verdict: FAILED on cupy: cupy loader")


def test_selftest_fails_loudly(monkeypatch, capsys):
    from minivit.engine import layers
    real = layers.softmax_backward
    monkeypatch.setattr(layers, "softmax_backward", lambda da, c: real(da, c) * 1.01)
    assert cli.main(["selftest", "--backend", "numpy"]) == 1
    assert "FAIL  gradcheck softmax" in capsys.readouterr().out


def test_selftest_asked_for_the_gpu_by_name_fails_without_one(capsys, monkeypatch):
    from minivit import selftest
    from minivit.engine import backend
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_cupy_error", "CuPy is not installed (test).")
    monkeypatch.setattr(selftest, "run_checks", lambda side, log: [selftest.Check("x", side, True, "")])
    assert cli.main(["selftest", "--backend", "cupy"]) == 1
    out = capsys.readouterr().out
    assert "GPU side not run: CuPy is not installed (test)." in out
    assert "verdict: FAILED on cupy: cupy GPU usable" in out
