"""guards.py: a step whose loss or gradients are NaN or Inf stops the run within that step,
naming it and what went wrong, and the last good checkpoint stays."""

import numpy as np
import pytest

from minivit import checkpoint as ckpt
from minivit import fast
from minivit.config import TrainConfig
from minivit.errors import RunFailed
from minivit.train import train

from helpers import TINY, quiet


def _nan_at(step_bad, where, real):
    """The run's loss (the fast path's cross_entropy) with the loss or its gradient poisoned
    at training step step_bad."""
    calls = {"n": 0}

    def poisoned(logits, labels, *smoothing):
        loss, dlogits = real(logits, labels, *smoothing)
        calls["n"] += 1
        if calls["n"] == step_bad:
            if where == "loss":
                loss = loss * np.nan
            else:
                dlogits = dlogits * np.inf
        return loss, dlogits
    return poisoned


@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # the poisoned step's NaN arithmetic
@pytest.mark.parametrize("where, message", [
    ("loss", "the loss is nan"),
    ("grad", "the gradient of head.bias (and 19 more tensors) holds NaN or Inf"),
])
def test_nan_stops_within_one_step_and_keeps_the_checkpoint(tmp_path, monkeypatch, where, message,
                                                            backend):
    steps_per_epoch = 230 // 32                         # 256 images, 10% held out
    monkeypatch.setattr(fast, "cross_entropy", _nan_at(steps_per_epoch + 3, where, fast.cross_entropy))
    cfg = TrainConfig.from_preset("sample", epochs=3, **TINY)
    with pytest.raises(RunFailed) as err:
        train(cfg, out=tmp_path / "run", progress=False, plots=False, log=quiet, backend=backend)
    assert isinstance(err.value, RuntimeError)
    text = str(err.value)
    assert f"step {steps_per_epoch + 3} (epoch 2, batch 3): {message}" in text
    assert "the last good checkpoint" in text and "is intact" in text
    _, _, meta = ckpt.load(tmp_path / "run" / "checkpoint.npz")
    assert meta["epoch"] == 1 and meta["step"] == steps_per_epoch
