"""The `minivit` command's options: build_parser() describes every subcommand, and
add_config_options() turns every TrainConfig field into an option (--embed-dim for
embed_dim), its type, range, choices and help taken from the field."""

import argparse
import dataclasses

from . import __version__, distributed
from .config import ENGINES, PRESETS, RANGES, TrainConfig, parse_duration, range_problem
from .engine import gradcheck
from .engine.backend import BACKENDS
from .data import DEFAULT_ROOT

DEBUG_ENV_VAR = "MINIVIT_DEBUG"


def _number(kind, range_name):
    """An argparse type for a number in one of config.RANGES."""
    field = dataclasses.field(metadata={"range": range_name})

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {RANGES[range_name][1]}, got {text!r}") from None
        problem = range_problem(value, field)
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}, got {text}")
        return value
    return parse


def _duration(text):
    try:
        return parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a duration such as 30m, 90s or 1h, got {text!r}") from None


# TrainConfig fields that are not options: the preset has its own, the rest is fixed by CIFAR-10
_NOT_OPTIONS = ("preset", "betas", "img_size", "in_chans", "num_classes")


def add_config_options(group):
    """One option per TrainConfig field (--embed-dim for embed_dim), its type, range,
    choices and help taken from the field; left out, the preset's value holds."""
    for f in dataclasses.fields(TrainConfig):
        if f.name in _NOT_OPTIONS:
            continue
        flag, meta = "--" + f.name.replace("_", "-"), f.metadata
        help_ = meta.get("help", "")
        if f.type is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif meta.get("parse") == "duration":
            group.add_argument(flag, type=_duration, default=None, help=help_, metavar="TIME")
        elif "choices" in meta:
            group.add_argument(flag, choices=list(meta["choices"]), default=None, help=help_)
        elif f.type is str:                                         # a path
            group.add_argument(flag, default=None, help=help_, metavar="FILE")
        else:
            kind = int if f.type is int else float
            group.add_argument(flag, type=_number(kind, meta["range"]), default=None, help=help_,
                               metavar=f.name.upper())


def _common(p, data=True, out_help="output folder"):
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="array backend (default: $MINIVIT_BACKEND, else numpy)")
    if data:
        p.add_argument("--data", metavar="DIR", default=None,
                       help="folder holding cifar-10-batches-py (default: $MINIVIT_DATA, "
                            "~/.cache/minivit, else the shipped sample)")
    p.add_argument("--out", metavar="PATH", default=None, help=out_help)


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose errors are two lines: the error, then where the options are
    listed (not the whole usage, 30 lines for `minivit train`, above the error)."""

    def error(self, message):
        where = (f"`{self.prog} --help` lists the options" if " " in self.prog else
                 f"`{self.prog} --help` lists the commands, `{self.prog} COMMAND --help` a command's options")
        self.exit(2, f"{self.prog}: error: {message}\n({where})\n")


def build_parser():
    ap = Parser(prog="minivit", description="A Vision Transformer with "
                "hand-derived gradients, on NumPy or CuPy.")
    ap.add_argument("--version", action="version", version=f"minivit {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    t = sub.add_parser("train", help="train a ViT on CIFAR-10",
                       description="Train a ViT on CIFAR-10. With no options: the 'default' "
                       "preset on the full CIFAR-10 when found, else the 'sample' preset on the "
                       "small sample shipped with minivit (under a minute on a CPU). On several "
                       "processes or machines: mpirun -n N minivit train ... (or srun), after "
                       f"{distributed.INSTALL_HINT}.")
    _common(t, out_help="run folder (default: runs/PRESET-DATE-TIME)")
    t.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="seed: the reference recipe (Adam 3e-4, batch 80, 30 epochs); default: "
                        "AdamW, warmup + cosine, label smoothing, crop + flip; hybrid: a conv stem, "
                        "Muon and progressive resizing, for CPU time budgets (--time-budget 30m); "
                        "sample: a small ViT for a quick CPU run")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out (default: the latest run under runs/)")
    t.add_argument("--init-from", metavar="CHECKPOINT", default=None,
                   help="start a new run from these weights (fine-tune, or train a finished run "
                        "further on a new schedule); the model's shape comes from the checkpoint")
    t.add_argument("--config", metavar="JSON", default=None,
                   help="a run's config.json: repeat that run (options given here override it)")
    add_config_options(t.add_argument_group("overrides of the preset"))
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--no-plots", action="store_true", help="draw no plots at the end")

    e = sub.add_parser("eval", help="score a checkpoint on the test set",
                       description="Overall and per-class accuracy of a checkpoint on the test set.")
    e.add_argument("--checkpoint", metavar="PATH", help="a checkpoint.npz, best.npz or final.npz (default: the model shipped with minivit)")
    e.add_argument("--batch-size", type=_number(int, "positive_int"), default=500)
    tta = e.add_mutually_exclusive_group()       # test-time augmentation
    tta.add_argument("--flip", action="store_true",
                     help="average each image's logits with its mirror image's (test-time augmentation)")
    tta.add_argument("--crops", action="store_true",
                     help="average over six views: the image and two copies shifted two pixels along "
                          "the diagonal, each with its mirror image (test-time augmentation)")
    e.add_argument("--engine", choices=ENGINES, default="fast",
                   help="what runs the model: the fast path (checked against the engine first; "
                        "default) or the engine's reference code")
    _common(e, out_help="also write the results as JSON to this file")

    p = sub.add_parser("predict", help="classify image files",
                       description="Top classes for PNG/JPEG images (resized to the model's input).")
    p.add_argument("--checkpoint", metavar="PATH", help="a checkpoint.npz, best.npz or final.npz (default: the model shipped with minivit)")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--top", type=_number(int, "positive_int"), default=3, help="classes to show (default 3)")
    _common(p, data=False, out_help="also write the predictions as JSON to this file")

    pl = sub.add_parser("plot", help="draw the plots of a run folder",
                        description="Learning curves, per-class accuracy, predictions and the "
                                    "confusion matrix of a run, as PNG files in the run folder.")
    pl.add_argument("run_dir", metavar="RUN_DIR")
    pl.add_argument("--out", metavar="DIR", default=None,
                    help="folder for the PNG files (default: the run folder)")

    gc = sub.add_parser("gradcheck", help="check hand-derived gradients numerically",
                        description="Compare analytic gradients with centered finite differences "
                                    "and print a table per tensor. With neither --layer nor --model: "
                                    "every layer, then a small model.")
    what = gc.add_mutually_exclusive_group()
    what.add_argument("--layer", choices=list(gradcheck.LAYERS), help="check one layer")
    what.add_argument("--model", action="store_true",
                      help="check whole (small) ViTs as the presets train them: the plain ViT, the "
                           "conv stem at stride 1 and 2, low-res images, drop path, mean and sequence pooling, "
                           "each through the engine and the fast path; the fast path's "
                           "class-token-only block and blocked GELU")
    gc.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                    help="float64 (default, strict) or float32 (to see why it needs looser marks)")
    gc.add_argument("--max-checks", type=_number(int, "positive_int"), default=None,
                    help="check at most this many elements per tensor (default: all)")
    gc.add_argument("--backend", choices=BACKENDS, default=None)

    at = sub.add_parser("attention", help="draw attention maps of a trained model",
                        description="Per-head attention of what the head reads (the class token, or the "
                                    "pooled patch tokens) in one layer, the attention rollout "
                                    "across layers and any pooling weights, over the image, as a PNG.")
    at.add_argument("--checkpoint", metavar="PATH", help="a checkpoint.npz, best.npz or final.npz (default: the model shipped with minivit)")
    at.add_argument("image", nargs="?", metavar="IMAGE", help="a PNG/JPEG file (default: a test image)")
    at.add_argument("--index", type=_number(int, "nonneg_int"), default=0, help="test image index when no IMAGE")
    at.add_argument("--layer", type=int, default=-1, help="block whose heads to show (default: last)")
    _common(at, out_help="PNG file to write (default: attention-IMAGE.png beside the checkpoint; "
                         "runs/shipped-model/ for the shipped model)")

    st = sub.add_parser("selftest", help="check the GPU path (or the CPU) on this machine",
                        description="Gradient-check every layer and the model in float64, check the "
                                    "fast path, compare training steps (float64 and float32: AdamW, "
                                    "EMA, clipping, stem, low resolution) and the loader's batches "
                                    "with NumPy's, and time a step (the first, compiling, apart), on "
                                    "NumPy and on the GPU when one is usable; prints a pass/fail line "
                                    "per check and a verdict.")
    st.add_argument("--backend", choices=BACKENDS, default="auto",
                    help="auto: the GPU side too when a GPU is usable (default); cupy: the GPU "
                         "side, failing when no GPU is usable; numpy: NumPy's side alone")

    ex = sub.add_parser("exercises", help="the course: write every backward pass yourself, graded",
                        description="The course's exercises: each a function of the engine (its name "
                                    "and signature) whose backward pass you write. With no action: "
                                    "the list, in learning order. Then `new FILE` writes the stubs, "
                                    "`check FILE` grades them (right / wrong with a hint / not done; "
                                    "exit 0 only when every exercise checked is right), and "
                                    "`minivit train --layers FILE` trains a ViT on them.")
    ex_sub = ex.add_subparsers(dest="action", metavar="ACTION")
    ex_sub.add_parser("list", help="the exercises, in learning order (the default)")
    new = ex_sub.add_parser("new", help="write the stub file: every exercise, its docstring, "
                                        "`raise NotImplementedError`")
    new.add_argument("file", metavar="FILE", help="the file to write (it must not exist yet)")
    chk = ex_sub.add_parser("check", help="grade a file's functions against finite differences "
                                          "and the engine")
    chk.add_argument("file", metavar="FILE")
    chk.add_argument("names", nargs="*", metavar="NAME", help="only these exercises (default: "
                     "every exercise of the core and every optional one written)")
    chk.add_argument("--all", action="store_true", help="the optional exercises too, written or "
                     "not (those written are checked anyway)")
    for action in ex_sub.choices.values():
        action.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                            help=f"show the traceback of minivit's own errors too (also: {DEBUG_ENV_VAR}=1)")

    d = sub.add_parser("download", help="download the full CIFAR-10",
                       description=f"Fetch the official archive (md5-checked) into --data "
                                   f"(default {DEFAULT_ROOT}).")
    d.add_argument("--data", metavar="DIR", default=str(DEFAULT_ROOT))
    for name, sp in sub.choices.items():
        sp.set_defaults(parser=sp)   # errors name the subcommand: "minivit train: error: ..."
        sp.add_argument("--debug", action="store_true",
                        help=f"show the traceback of minivit's own errors too (also: {DEBUG_ENV_VAR}=1)")
    return ap
