"""fast/check.py: the fast path checked against the engine (what runs before every fast
training run), and the fast path's own gradient checks (the class-token-only block)."""

import re

import numpy as np
import pytest

import minivit
from minivit.fast import check, check_against_engine, kernels

from helpers import tiny_config


@pytest.mark.parametrize("fields", [dict(), dict(pool="mean", stem_channels=4, stem_stride=2),
                                    dict(pool="seq", drop_path=0.3, stem_channels=4, stem_layers=2),
                                    dict(gelu="tanh")],
                         ids=["vit", "stem-mean", "two-convs-seq-drop-path", "tanh"])
def test_the_fast_path_agrees_with_the_engine(fields, backend):
    """A float32 model of any kind: the check runs a float64 copy of it (same weights)
    through both paths, on every side asked for, and finds no difference."""
    model = minivit.ViT(**tiny_config(**fields), backend=backend, seed=1)
    assert check_against_engine(model, sides=[8, 4] if not fields.get("stem_channels") else None) is None
    diffs = check.compare(model if model.dtype == np.float64 else
                          minivit.ViT(**tiny_config(**fields), dtype="float64", backend=backend, seed=1),
                          np.random.default_rng(0).standard_normal((2, 3, 8, 8)))
    assert set(diffs) == {"logits", "input", *model.state_dict()}
    assert max(diffs.values()) < 1e-12


def test_a_fast_path_changed_alone_is_caught_too_and_the_line_says_by_how_much(monkeypatch):
    """The check is symmetric: a fast-path kernel that drifts from the engine stops the run
    as an edited engine does (tests/machinery/test_engine_choice.py). The one line names
    the worst tensor, the difference, the image side and the tolerance."""
    model = minivit.ViT(**tiny_config(), seed=1)
    monkeypatch.setattr(kernels, "residual", lambda x, h, b, k: x + 1.001 * k * (h + b))
    problem = check_against_engine(model, sides=[8, 4])
    assert problem is not None and "\n" not in problem
    assert re.fullmatch(r"the fast path disagrees with the engine \((the logits differ|the gradient "
                        r"of [\w.]+ differs) by \d\.\de-0\d relative on (8x8|4x4) images, more than 1e-06\): the "
                        r"engine was changed and the fast path was not; train the engine as it is "
                        r"with --engine reference", problem), problem


def test_the_class_token_only_block_gradchecks_and_the_check_catches_an_error(monkeypatch):
    report = check.check_cls_only_block()
    assert report.passed, str(report)
    assert report.title == "block_cls_only (fast path)"
    real = kernels.softmax_backward_ds
    monkeypatch.setattr(kernels, "softmax_backward_ds", lambda *a: 1.01 * real(*a))
    assert not check.check_cls_only_block().passed


def test_the_fast_paths_own_reports():
    """What `minivit gradcheck --model` adds for the fast path: the class-token-only block,
    and on NumPy the blocked GELU (a CuPy run never takes it)."""
    titles = [r.title.split(" (")[0] for r in check.fast_path_reports(max_checks=3)]
    assert titles == ["block_cls_only", "blocked GELU"]
    assert all(r.passed for r in check.fast_path_reports(max_checks=3))
    assert check.one_thread(minivit.ViT(**tiny_config())).threads == 1


def test_a_fast_path_that_raises_where_the_engine_runs_stops_with_one_line(monkeypatch):
    """A setting the engine knows and the fast path's own table does not (a new GELU): the
    check says so in one line instead of a traceback."""
    from minivit.fast import runner
    monkeypatch.setattr(runner, "GELU_BIAS_KERNELS", {"exact": kernels.gelu_bias})
    model = minivit.ViT(**tiny_config(gelu="tanh"), seed=1)
    problem = check_against_engine(model, sides=[8])
    assert problem is not None and "\n" not in problem
    assert problem.startswith("the fast path cannot run this model though the engine can (KeyError: 'tanh', "
                              "on 8x8 images)") and problem.endswith("with --engine reference")


def test_a_fast_path_bug_keeps_its_traceback(monkeypatch):
    """Only a missing table entry (KeyError) is said in one line; any other error of the
    fast path is a bug and goes through as it is."""
    from minivit.fast import runner

    def broken(*a, **kw):
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(runner, "GELU_BIAS_KERNELS", {"exact": broken, "tanh": broken})
    with pytest.raises(ZeroDivisionError):
        check_against_engine(minivit.ViT(**tiny_config(), seed=1), sides=[8])


def test_every_gelu_setting_has_its_fast_kernel():
    from minivit.engine import layers
    from minivit.fast import runner
    assert set(runner.GELU_BIAS_KERNELS) == set(layers.GELUS)
