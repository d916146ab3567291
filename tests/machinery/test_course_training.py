"""Training on a student's functions (`minivit train --layers FILE`, or train(...,
student=globals()) from the notebook): every right function runs in the engine's place,
from the first step to the last, giving the engine's own numbers; a wrong one stops the
run before its first step, with the check's verdict; the engine is itself again after."""

import inspect
import textwrap

import numpy as np
import pytest

from minivit import checkpoint as ckpt
from minivit import cli
from minivit.config import TrainConfig
from minivit.course import yours
from minivit.course.exercises import EXERCISES, engine_function
from minivit.engine import layers, loss, optim, transformer
from minivit.train import train

from helpers import TINY, quiet

# what the sample preset's ViT calls (the extra exercises are other options' functions)
USED = [e.name for e in EXERCISES if not e.extra]


def counting_functions():
    """A student's namespace: each exercise a function of the stub's signature that counts
    its calls and does what the engine's does (the engine's, read before any swap)."""
    calls = {name: 0 for name in USED}
    namespace = {"calls": calls, "engine": {n: engine_function(n) for n in USED}}
    for name in USED:
        fn = engine_function(name)
        body = getattr(fn, "body", fn)
        params = inspect.signature(body)
        args = ", ".join(params.parameters)
        call = f"engine[{name!r}].body({args})" if hasattr(fn, "body") else f"engine[{name!r}]({args})"
        exec(textwrap.dedent(f"""
            def {name}{params}:
                calls[{name!r}] += 1
                return {call}
        """), namespace)
    return namespace


def weights(folder):
    return ckpt.load(folder / "final.npz")[0]


def test_a_students_functions_run_in_every_step_and_give_the_engines_numbers(tmp_path):
    cfg = TrainConfig.from_preset("sample", engine="reference", epochs=1, **TINY)
    train(cfg, out=tmp_path / "engine", plots=False, progress=False, log=quiet)
    namespace, lines = counting_functions(), []
    train(cfg, out=tmp_path / "yours", plots=False, progress=False, log=lines.append, student=namespace)
    closing = next(line for line in lines if line.startswith("That ViT learned from your gradients"))
    ran = [e.name for e in EXERCISES if not e.extra and e.name != "adam_update"]
    assert closing.startswith(f"That ViT learned from your gradients: {', '.join(ran)} of your notebook")
    assert closing.endswith("; not used by this model: adam_update.")   # the preset trains with AdamW
    mine, theirs = weights(tmp_path / "yours"), weights(tmp_path / "engine")
    assert all(np.array_equal(mine[k], theirs[k]) for k in theirs)
    for e in EXERCISES:                  # and the engine is its own again
        module = {"layers": layers, "transformer": transformer, "loss": loss, "optim": optim}[e.module]
        assert getattr(module, e.name) is engine_function(e.name)
    assert layers.GELUS["exact"] == (layers.gelu_forward, engine_function("gelu_backward"))
    assert transformer.linear_backward is engine_function("linear_backward")


def test_train_layers_file_from_the_command_line(tmp_path, capsys):
    path = tmp_path / "mine.py"
    path.write_text(textwrap.dedent("""\
        import math
        from minivit.engine.layers import *
        def gelu_backward(dy, cache):
            x = cache.x
            return dy * (cache.cdf + x * xp_exp(-0.5 * x * x) / math.sqrt(2 * math.pi))
        def xp_exp(a):
            return array_module(a).exp(a)
        def softmax_backward(da, cache):
            raise NotImplementedError
    """))
    out = tmp_path / "run"
    assert cli.main(["train", "--layers", str(path), "--epochs", "1", "--limit-train", "200",
                     "--embed-dim", "16", "--depth", "1", "--num-heads", "2", "--batch-size", "32",
                     "--out", str(out), "--no-progress", "--no-plots"]) == 0
    text = capsys.readouterr().out
    assert f"Your functions: 1 of {path} in the engine's place (gelu_backward)" in text
    assert "run by the engine" in text
    assert "That ViT learned from your gradients: gelu_backward of" in text
    saved = ckpt.load(out / "final.npz")[2]["train"]
    assert saved["layers"] == str(path) and saved["engine"] == "reference"


def test_a_wrong_function_is_refused_before_the_first_step(tmp_path, capsys):
    path = tmp_path / "mine.py"
    path.write_text(textwrap.dedent("""\
        from minivit.engine.layers import *
        def layernorm_backward(dy, cache):
            xhat, rstd, w = cache.xhat, cache.rstd, cache.w
            g = dy * w
            dx = rstd * (g - xhat * (g * xhat).mean(axis=-1, keepdims=True))
            return dx, (dy * xhat).reshape(-1, w.size).sum(0), dy.reshape(-1, w.size).sum(0)
    """))
    out = tmp_path / "run"
    assert cli.main(["train", "--layers", str(path), "--epochs", "1", "--out", str(out),
                     "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "has 1 wrong function" in err and "layernorm_backward" in err and "dx wrong" in err
    assert not out.exists()                              # no step, no folder left


def test_layers_needs_the_engine_not_the_fast_path(tmp_path, capsys):
    path = tmp_path / "mine.py"
    path.write_text("from minivit.engine.layers import *\n")
    with pytest.raises(SystemExit):
        cli.main(["train", "--layers", str(path), "--engine", "fast", "--out", str(tmp_path / "r")])
    assert "(--engine reference" in capsys.readouterr().err


def test_in_the_engine_swaps_every_reference_and_restores_them():
    def mine(dy, cache, need_dx=True):
        return engine_function("linear_backward")(dy, cache, need_dx)
    with yours.in_the_engine({"linear_backward": mine}):
        assert layers.linear_backward is mine and transformer.linear_backward is mine
    assert layers.linear_backward is engine_function("linear_backward")
    assert transformer.linear_backward is engine_function("linear_backward")


def test_the_notebooks_namespace_is_as_it_was_after_training(tmp_path):
    """The exercises not done are the engine's during the run, the student's stubs again
    after it (a check cell run after the training cell grades the student's code)."""
    from minivit.course import stubs
    namespace = {k: v for k, v in vars(stubs).items()}
    namespace["gelu_backward"] = counting_functions()["gelu_backward"]
    before = dict(namespace)
    cfg = TrainConfig.from_preset("sample", engine="reference", epochs=1, **TINY)
    train(cfg, out=tmp_path / "run", plots=False, progress=False, log=quiet, student=namespace)
    assert namespace == before
    assert yours.check(namespace, ["layernorm_backward"])[0][1].status == "not done"


def test_a_function_calling_the_engines_through_its_module_trains(tmp_path):
    """While training, layers.linear_backward is the student's; the student's own call to
    it goes to the engine's, as when it was graded (not into itself, forever)."""
    path = tmp_path / "mine.py"
    path.write_text(textwrap.dedent("""\
        from minivit.engine import layers
        def linear_backward(dy, cache, need_dx=True):
            return layers.linear_backward(dy, cache, need_dx)
    """))
    cfg = TrainConfig.from_preset("sample", layers=str(path), engine="reference", epochs=1, **TINY)
    lines = []
    train(cfg, out=tmp_path / "run", plots=False, progress=False, log=lines.append)
    assert any(line.startswith("That ViT learned from your gradients: linear_backward of") for line in lines)


def test_student_functions_need_the_engine_not_the_fast_path(tmp_path):
    cfg = TrainConfig.from_preset("sample", epochs=1, **TINY)
    with pytest.raises(ValueError, match="engine='reference'"):
        train(cfg, out=tmp_path / "run", log=quiet, student=counting_functions())
    assert not (tmp_path / "run" / "checkpoint.npz").exists()
