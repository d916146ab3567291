"""Settings and helpers the tests share (tests/ is on sys.path: `from helpers import ...`)."""

import functools
import inspect
import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------- tiny models

def tiny_config(**over):
    """A ViT of 8x8 images, 4x4 patches, width 8, 2 blocks of 2 heads, 3 classes."""
    cfg = dict(img_size=8, patch_size=4, in_chans=3, embed_dim=8, depth=2, num_heads=2,
               mlp_ratio=2.0, num_classes=3)
    cfg.update(over)
    return cfg


# TrainConfig fields of a tiny run on the shipped sample: 256 images, 230 to train (7 steps
# of 32 an epoch), 26 to validate
TINY = dict(embed_dim=16, depth=1, num_heads=2, mlp_ratio=2.0, batch_size=32, limit_train=256,
            eval_batch_size=128)

# the same as `minivit train` options (200 images: 180 to train, 5 steps of 32 an epoch)
TINY_ARGS = ["--embed-dim", "16", "--depth", "1", "--num-heads", "2", "--mlp-ratio", "2",
             "--batch-size", "32", "--limit-train", "200", "--no-progress"]


# the conv stems the model gradient checks cover (engine and fast path alike)
STEMS = dict(argnames="stem", argvalues=[dict(stem_stride=1), dict(stem_stride=2), dict(stem_layers=2),
                                         dict(stem_layers=2, pool="mean")],
             ids=["stride1", "stride2", "two-convs", "two-convs-mean-pool"])


def stem_model(backend, stem):
    """A float64 ViT of 8x8 images with a 3-channel conv stem, for gradient checks."""
    import minivit
    return minivit.ViT(img_size=8, patch_size=2, embed_dim=8, depth=2, num_heads=2, mlp_ratio=2.0,
                       num_classes=3, stem_channels=3, **stem, dtype="float64", backend=backend, seed=1)


def quiet(*args):
    """A log that says nothing."""


def exit_status(argv):
    """`minivit ARGV`'s exit status (argparse's errors exit through SystemExit)."""
    from minivit import cli
    try:
        return cli.main(argv)
    except SystemExit as e:
        return e.code


def read_metrics(run_dir):
    from minivit.files import read_jsonl
    return read_jsonl(Path(run_dir) / "metrics.jsonl")


def same_checkpoints(a, b):
    """Assert that two checkpoint files hold the same arrays (weights, optimizer state, the
    weight average), bit for bit."""
    from minivit import checkpoint as ckpt
    wa, oa, _ = ckpt.load(a)
    wb, ob, _ = ckpt.load(b)
    assert sorted(wa) == sorted(wb) and sorted(oa) == sorted(ob)
    for k in list(wa) + list(oa):
        np.testing.assert_array_equal(wa.get(k, oa.get(k)), wb.get(k, ob.get(k)), err_msg=k)


def untimed_metrics(run_dir):
    """metrics.jsonl without the fields that depend on the machine's speed."""
    timed = ("epoch_seconds", "images_per_second", "train_seconds")
    return [{k: v for k, v in m.items() if k not in timed} for m in read_metrics(run_dir)]


class StepClock:
    """A clock for train(clock=...) that stands still except where a test moves it: by
    `per_step` seconds after every training step (pass on_step=clock.step), or by hand
    (clock.t += ...). Time budgets and checkpoint intervals then count steps, whatever the
    machine's speed."""

    def __init__(self, per_step=0.125):
        self.t, self.per_step = 0.0, per_step

    def __call__(self):
        return self.t

    def step(self, _step=None):
        self.t += self.per_step


# ------------------------------------------------------------- bugs planted in the code

def plant(monkeypatch, owner, name, old, new):
    """Replace `old` by `new` in the source of owner.name (a function or method) and
    install the result for this test: e.g. a host array where a device array belongs."""
    func = getattr(owner, name)
    source = textwrap.dedent(inspect.getsource(func))
    assert old in source, f"{old!r} not in {name}"
    module = inspect.getmodule(func)
    namespace = {}
    exec(compile(source.replace(old, new), f"<planted {name}>", "exec"), module.__dict__, namespace)
    monkeypatch.setattr(owner, name, namespace[name])


# ------------------------------------------------------------------------------- MPI

@functools.lru_cache(maxsize=None)
def _mpirun():
    """(mpirun's path or None, why it is missing): asked once, on first use (loading
    mpi4py starts MPI in this process, which only the MPI tests need)."""
    try:
        import mpi4py.MPI  # noqa: F401  (loads the MPI library)
    except Exception as e:                       # ImportError, or no libmpi
        return None, f"mpi4py cannot load MPI ({e}): pip install -e .[mpi]"
    found = shutil.which("mpirun") or shutil.which("mpiexec")
    beside = Path(sys.executable).parent / "mpirun"
    found = found or (str(beside) if beside.exists() else None)
    return found, None if found else "no mpirun on PATH or beside Python: pip install -e .[mpi]"



# ---------------------------------------------------------------- fault injection

def fault_args():
    """benchmarks/fault_injection.py's tiny run without plots, saving at epoch ends only
    (no checkpoint on the clock: a run's events do not depend on the machine's speed)."""
    import fault_injection as fi
    return [*fi.ARGS, "--no-plots", "--checkpoint-minutes", "0"]


def __getattr__(name):
    """MPIRUN, MPI_MISSING (see _mpirun) and FAULT_ARGS, made on first use."""
    if name == "MPIRUN":
        return _mpirun()[0]
    if name == "MPI_MISSING":
        return _mpirun()[1]
    if name == "FAULT_ARGS":
        return fault_args()
    raise AttributeError(name)


# ------------------------------------------------------------- PyTorch's numbers, saved

TORCH_REFERENCE = Path(__file__).resolve().parent / "reference" / "torch_simplevit.npz"


def torch_reference():
    """The numbers PyTorch computed for reference/make_torch_reference.py's model: its
    parameters ("param/NAME"), input "x", "labels", "logits", "loss", the gradients
    ("grad/NAME", "grad/input"), Adam's and AdamW's weights after some steps, and "meta"."""
    import json
    with np.load(TORCH_REFERENCE, allow_pickle=False) as f:
        arrays = dict(f)
    arrays["meta"] = json.loads(str(arrays["meta"]))
    return arrays


def prefixed(ref, prefix):
    return {k[len(prefix):]: v for k, v in ref.items() if k.startswith(prefix)}


def model_from_reference(ref, backend="numpy"):
    """The reference's model in float64, with its parameters."""
    import minivit
    model = minivit.ViT(**ref["meta"]["config"], dtype="float64", backend=backend)
    model.load_state_dict(prefixed(ref, "param/"))
    return model


def watch_the_check(monkeypatch):
    """Mark the fast path's check against the engine, which a fast run makes before its
    first step (minivit.fast.check_against_engine): -> a list that is not empty while the
    check runs, so a test spying on FastRunner can tell the check's passes from training's."""
    from minivit import fast
    running, check = [], fast.check_against_engine

    def checked(*args, **kwargs):
        running.append(True)
        try:
            return check(*args, **kwargs)
        finally:
            running.pop()
    monkeypatch.setattr(fast, "check_against_engine", checked)
    return running


def stopped_run(out, straight):
    """A fault-injection run (FAULT_ARGS) in out, stopped cleanly by SIGTERM after epoch 2 of
    its 3; straight: the conftest fixture's (folder, events) of the uninterrupted run."""
    import fault_injection as fi
    at = [i for i, e in enumerate(straight[1], 1) if e == "save: after the rename, checkpoint.npz"][1]
    proc = fi.run_child([*fault_args(), "--out", str(out)], FAULT_AT=at, FAULT_SIGNALS="TERM")
    assert proc.returncode == 130 and "SIGTERM: stopped after epoch 2" in proc.stdout, proc.stderr
