"""Checkpoints: one .npz file, written atomically, read without pickle.

Inside the file:
    <PyTorch state-dict name>   the model's weights, e.g. "blocks.0.attn.in_proj_weight"
    optim.m.<name>, optim.v.<name>   the optimizer's moment estimates (training checkpoints)
    optim.ema.shadow             the flat weight average, when training keeps one
    minivit.meta                 a JSON document (as uint8 bytes): format version, model
                                 configuration, training configuration, epoch, step,
                                 optimizer scalars, position in the epoch, normalization,
                                 best accuracy

The weights keep PyTorch's names, so the PyTorch SimpleViT loads them directly (a model
of the same shape: no conv stem, pool "cls" or "mean"):

    sd = minivit.checkpoint.load_weights("best.npz")
    torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
"""

import dataclasses
import json
import zipfile
from pathlib import Path

import numpy as np

from .engine.backend import to_host
from .engine.config import ViTConfig
from .engine.model import ViT
from .errors import BadValue
from .files import atomic_write

FORMAT = "minivit-checkpoint-1"
# the trained model that ships with minivit (pretrained/README.md says how it was made)
SHIPPED_MODEL = Path(__file__).resolve().parent / "pretrained" / "cifar10-hybrid-30min.npz"
META_KEY = "minivit.meta"
OPTIM_PREFIX = "optim."


class CheckpointError(BadValue):
    """A checkpoint file is missing, damaged, or not a minivit checkpoint. problem: the
    message without its advice (for callers that give their own)."""

    def __init__(self, problem, fix=None):
        self.problem = problem
        super().__init__(f"{problem}: {fix}" if fix else problem)


def save(path, model, meta, optimizer=None, ema=None):
    """Write model weights (+ optimizer state and the weight average) and the meta dict to
    path, atomically: a crash while writing leaves the previous file intact."""
    arrays = {name: to_host(value) for name, value in model.state_dict().items()}
    meta = dict(meta, format=FORMAT, model=dataclasses.asdict(model.config))
    if optimizer is not None:
        state = optimizer.state_dict()
        meta["optimizer"] = {k: state[k] for k in ("t", "lr", "betas", "eps")}
        meta["optimizer"]["kind"] = type(optimizer).__name__
        for k, v in state.items():
            if isinstance(v, np.ndarray):
                arrays[OPTIM_PREFIX + k] = v
    if ema is not None:                       # the weight average, for resuming
        state = ema.state_dict()
        meta["ema"] = {"t": state["t"], "decay": state["decay"]}
        arrays[OPTIM_PREFIX + "ema.shadow"] = state["shadow"]
    arrays[META_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load(path, option="--checkpoint"):
    """Read a checkpoint -> (weights dict, optimizer arrays dict, meta dict). Never
    unpickles anything; a damaged or foreign file raises CheckpointError, its fix naming
    option (the command-line option the path came from)."""
    fix = f"point {option} at a checkpoint.npz or best.npz written by `minivit train`"
    if Path(path).is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file",
                              f"{fix} (e.g. {Path(path) / 'best.npz'})")
    if Path(path).is_file() and not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is truncated or damaged, or not a .npz checkpoint at all "
                              f"(it is not a whole zip archive)", fix)
    try:
        with np.load(path, allow_pickle=False) as f:
            if META_KEY not in f.files:
                raise CheckpointError(f"{path} is not a minivit checkpoint (it has no "
                                      f"{META_KEY} entry)", fix)
            meta = json.loads(bytes(f[META_KEY]).decode())
            weights, optim = {}, {}
            for k in f.files:
                if k.startswith(OPTIM_PREFIX):
                    optim[k[len(OPTIM_PREFIX):]] = f[k]
                elif k != META_KEY:
                    weights[k] = f[k]
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist", fix) from None
    except CheckpointError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {path} is truncated or damaged ({type(e).__name__}: "
                              f"{e})", "use another checkpoint (best.npz and checkpoint.npz are "
                              "written separately)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"{path} has format {found!r}, expected {FORMAT!r}", fix)
    return weights, optim, meta


RUN_CHECKPOINTS = ("checkpoint.npz", "best.npz", "final.npz")    # what a run folder keeps


def intact(folder):
    """The checkpoints of a run folder that load whole -> [(path, meta)], in the order
    checkpoint.npz, best.npz, final.npz."""
    found = []
    for name in RUN_CHECKPOINTS:
        path = Path(folder) / name
        if path.is_file():
            try:
                found.append((path, load(path)[2]))
            except CheckpointError:
                pass
    return found


def load_to_resume(path):
    """load() for --resume: a damaged checkpoint.npz raises CheckpointError saying which of
    the run's other checkpoints are intact and the command that goes on from one."""
    try:
        return load(path)
    except CheckpointError as e:
        folder = Path(path).parent
        others = [(p, m) for p, m in intact(folder) if p.name != Path(path).name]
        config = folder / "config.json"
        start = ["minivit", "train"] + (["--config", str(config)] if config.is_file() else [])
        if not others:
            raise CheckpointError(f"{e.problem}, and no other checkpoint of {folder} is intact",
                                  "start the run again: " + " ".join(start)) from None
        path, meta = max(others, key=lambda pm: pm[1].get("epoch") or 0)    # the latest
        cfg = meta.get("train") or {}
        left = (cfg.get("epochs") or 0) - (meta.get("epoch") or 0)
        start += ["--init-from", str(path)]
        start += ["--epochs", str(left)] if left > 0 and not cfg.get("time_budget") else []
        start += ["--data", meta["data_arg"]] if meta.get("data_arg") else []
        kept = ", ".join(f"{p} (epoch {m.get('epoch')})" for p, m in others)
        raise CheckpointError(
            f"{e.problem}, so the run cannot resume exactly; still intact: {kept}",
            f"go on from the latest in a new run folder (its weights; the optimizer state and "
            f"the place in the schedule were in checkpoint.npz): {' '.join(start)}") from None


def load_weights(path):
    """Only the weights, {PyTorch name: array}."""
    return load(path)[0]


def load_model(path, backend=None):
    """Rebuild the ViT a checkpoint was saved from, with its weights -> (model, meta)."""
    weights, _, meta = load(path)
    model = ViT(ViTConfig.from_dict(meta["model"]), backend=backend)
    try:
        model.load_state_dict(weights)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return model, meta


# model fields that are training settings, not shapes: weights fit a model that differs in them
NOT_SHAPE = ("drop_path",)


def model_shape(saved):
    """A checkpoint's model (its meta["model"]) without NOT_SHAPE: what fixes its weights."""
    return {k: v for k, v in saved.items() if k not in NOT_SHAPE}


def init_from_mismatch(path, saved, wanted):
    """None when the weights of checkpoint path, whose model is saved (its meta["model"]),
    fit a model with the fields of wanted (a dict; fields it lacks are not compared);
    else the message for --init-from: what differs, and the fix."""
    shape = model_shape(saved)
    differ = [k for k in shape if k in wanted and wanted[k] != shape[k]]
    if not differ:
        return None
    return (f"--init-from {path}: its model has " + ", ".join(f"{k} {shape[k]!r}" for k in differ)
            + "; drop " + ", ".join("--" + k.replace("_", "-") for k in differ)
            + " (the model's shape comes from the checkpoint; this run asks for "
            + ", ".join(f"{k} {wanted[k]!r}" for k in differ) + ")")


def shipped_summary():
    """One line about the shipped model, from its summary.json."""
    summary = SHIPPED_MODEL.with_name("summary.json")
    if not summary.exists():
        return str(SHIPPED_MODEL)
    s = json.loads(summary.read_text())
    return (f"{SHIPPED_MODEL.name}: {s['test_acc']:.1%} on {s['test_images']} CIFAR-10 test images "
            f"after {s['train_seconds'] / 60:.0f} minutes of training on a 2-core CPU")


def export(src, dst):
    """Copy a checkpoint's weights and configuration (no optimizer state, no machine
    paths) to dst, e.g. to ship a trained model."""
    weights, _, meta = load(src)
    meta = {k: v for k, v in meta.items() if k not in ("optimizer", "ema", "in_epoch")}
    meta["data_arg"] = None
    model = ViT(ViTConfig.from_dict(meta["model"]))
    model.load_state_dict(weights)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    save(dst, model, {k: v for k, v in meta.items() if k not in ("format", "model")})
