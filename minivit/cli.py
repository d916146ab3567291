"""The `minivit` command: train, eval, predict, plot, download, gradcheck, attention and
selftest (options.py holds the options, this file what each command does).

    minivit train                       # full CIFAR-10 if found, else the shipped sample
    minivit train --preset seed --data ~/cifar10 --backend cupy
    minivit train --resume --out runs/seed-20261123-101500
    minivit train --init-from runs/.../final.npz --epochs 10
    minivit eval --checkpoint runs/.../best.npz
    minivit predict --checkpoint runs/.../best.npz cat.png dog.jpg
    minivit plot runs/...
    minivit gradcheck --layer attention
    minivit attention --checkpoint runs/.../best.npz --index 3
    minivit download
    minivit selftest --backend cupy
"""

import contextlib
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from . import checkpoint as ckpt
from . import distributed, fast
from .config import TrainConfig
from .data import (CLASSES, DataError, data_or_sample, download_cifar10, find_cifar10, is_sample,
                   load_test, normalize)
from .engine import gradcheck
from .engine.backend import to_host
from .errors import BadValue, MinivitError, MissingPackage
from .evaluate import score_checkpoint
from .fast.check import fast_path_reports, one_thread
from .files import WriteError, read_json, write_json
from .options import DEBUG_ENV_VAR, build_parser
from .runlock import train_locked

EXIT_INTERRUPTED = 130


def _check_writable(parser, folder):
    """Fail up front, argparse-style, when the run folder cannot be created or written."""
    import tempfile
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        parser.error(f"--out {folder} is not a writable folder ({e.strerror}); choose another --out")


def new_run_folder(preset, parent="runs"):
    """A new folder parent/PRESET-DATE-TIME (-2, -3, ... when taken), created here, so
    two runs started in the same second never share one."""
    base = os.path.join(parent, f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(parent, exist_ok=True)
    for n in range(1, 10 ** 6):
        path = base if n == 1 else f"{base}-{n}"
        try:
            os.mkdir(path)                       # atomic: exactly one run gets each name
            return path
        except FileExistsError:
            continue


def latest_run(parent="runs"):
    """The run folder under parent whose checkpoint.npz was written last, or None."""
    found = max(Path(parent).glob("*/checkpoint.npz"), key=lambda p: p.stat().st_mtime, default=None)
    return str(found.parent) if found else None


def _overrides(args, skip=()):
    """The TrainConfig fields given on the command line."""
    fields = TrainConfig.__dataclass_fields__
    return {k: v for k, v in vars(args).items() if k in fields and k not in skip and v is not None}


def config_for(args, parser):
    """The new run's TrainConfig: a preset (or --config's saved run), the model of
    --init-from's checkpoint, then the options given."""
    base = {}
    if args.config:
        try:
            saved = read_json(args.config)
            base = {k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__}
        except (OSError, ValueError, AttributeError) as e:
            parser.error(f"--config {args.config}: cannot read it as a run's config.json ({e})")
        others = sorted(set(saved) - set(base))
        if base and others:                      # a summary.json has a preset too
            parser.error(f"--config {args.config} is not a run's config.json: it holds "
                         f"{', '.join(others[:4])}{', ...' if len(others) > 4 else ''}, which are not "
                         f"training settings; give RUN/config.json")
        if "betas" in base:
            base["betas"] = tuple(base["betas"])
        if not base:
            parser.error(f"--config {args.config} holds no training settings: give a config.json "
                         f"written by `minivit train` in a run folder")
    preset = args.preset or base.get("preset")
    if preset is None:
        found = find_cifar10(args.data)
        preset = "default" if found is not None and not is_sample(found) else "sample"
        if found is not None and is_sample(found):
            print("note: --data is the shipped sample: using the 'sample' preset (pass --preset "
                  "to choose another)", file=sys.stderr)
    if args.init_from:
        model = ckpt.load(args.init_from, "--init-from")[2]["model"]
        problem = ckpt.init_from_mismatch(args.init_from, model, _overrides(args))
        if problem:
            parser.error(problem)
        base.update(ckpt.model_shape(model))
    try:
        cfg = TrainConfig.from_preset(preset, **{**{k: v for k, v in base.items() if k != "preset"},
                                                 **_overrides(args, skip=("preset",))}).validate()
    except (ValueError, TypeError) as e:
        parser.error(str(e))
    if args.epochs is not None and cfg.time_budget > 0:
        print(f"note: --epochs is ignored: this run has a time budget of {cfg.time_budget:g} s "
              f"(add --time-budget 0 to train by epochs)", file=sys.stderr)
    return cfg


def cmd_train(args, parser):
    world = distributed.world()
    if args.resume:
        if args.init_from or args.config:
            parser.error("--resume continues a run as it was saved; --init-from and --config "
                         "start a new run: give one or the other")
        if args.out is None:
            args.out = world.share(latest_run() if world.main else None)
            if args.out is None:
                parser.error("--resume: no --out RUN_DIR given and no run under runs/ holds a "
                             "checkpoint.npz; pass --out with the run folder to continue")
            if world.main:
                print(f"Resuming the latest run: {args.out}")
        overrides = _overrides(args)
        if overrides:
            print(f"note: --resume continues with the run's saved configuration; ignoring "
                  f"{', '.join('--' + k.replace('_', '-') for k in sorted(overrides))} "
                  f"(to train a finished run further with new settings: --init-from "
                  f"{os.path.join(args.out, 'checkpoint.npz')})", file=sys.stderr)
        train_locked(None, data=args.data, out=args.out, resume=True, backend=args.backend,
                     progress=not args.no_progress, plots=not args.no_plots)
        return 0
    if args.layers:
        args.layers = str(Path(args.layers).resolve())       # the run's record, wherever it resumes
        args.engine = args.engine or "reference"             # the student's functions run in the engine
    cfg = config_for(args, parser)
    created = False
    if world.main:
        if args.out is None:
            out, created = new_run_folder(cfg.preset), True
        else:
            out, created = args.out, not os.path.exists(args.out)
            _check_writable(parser, out)
    out = world.share(out if world.main else None)      # every rank writes nowhere else
    if world.main:
        print(f"Run folder: {out}")
    try:
        train_locked(cfg, data=args.data, out=out, init_from=args.init_from, backend=args.backend,
                     progress=not args.no_progress, plots=not args.no_plots)
    except BaseException:
        if created and world.main and os.path.isdir(out) and not os.listdir(out):
            os.rmdir(out)                        # a failed start leaves no empty folder
        raise
    return 0


def checkpoint_or_shipped(args, parser):
    """args.checkpoint, or the model shipped with minivit (saying so) when none is given."""
    if args.checkpoint is not None:
        return args.checkpoint
    if not ckpt.SHIPPED_MODEL.exists():
        parser.error("no --checkpoint given and no model ships with this copy of minivit: "
                     "train one with `minivit train` and pass --checkpoint RUN_DIR/best.npz")
    print(f"No --checkpoint given: using the model shipped with minivit ({ckpt.shipped_summary()}).")
    return ckpt.SHIPPED_MODEL


def _runner(engine):
    """What scores a model: the engine's ViT itself, or the fast path once it was checked
    against the engine (a disagreement stops with one line)."""
    if engine == "reference":
        return None

    def checked(model):
        problem = fast.check_against_engine(model)
        if problem:
            raise BadValue(problem)
        return fast.FastRunner(model)
    return checked


def cmd_eval(args, parser):
    args.checkpoint = checkpoint_or_shipped(args, parser)
    views = "crops" if args.crops else "flip" if args.flip else "one"
    r = score_checkpoint(args.checkpoint, data=args.data, backend=args.backend,
                         batch_size=args.batch_size, log=print, wrap=_runner(args.engine), views=views)
    print(f"checkpoint {args.checkpoint} (epoch {r['meta'].get('epoch')}), {len(r['preds'])} test "
          f"images from {r['folder']}")
    said = dict(one="", flip="  (with flipped copies)", crops="  (six views: shifted and flipped copies)")
    print(f"accuracy {r['accuracy']:.4f}  loss {r['loss']:.4f}{said[views]}")
    for name, a, n in zip(CLASSES, r["per_class"], np.bincount(r["y_test"], minlength=10)):
        print(f"  {name:<11s} {a:.4f}  ({n} images)")
    if args.out:
        result = dict(checkpoint=str(args.checkpoint), data=r["folder"], test_images=int(len(r["preds"])), views=views,
                      accuracy=r["accuracy"], loss=r["loss"], per_class_acc=dict(zip(CLASSES, r["per_class"])))
        _write_json_file(args.out, result)
    return 0


def load_image(path, size):
    """An image file -> uint8 [3, size, size] (RGB, resized with bicubic filtering)."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            im = im.convert("RGB").resize((size, size), Image.BICUBIC)
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"cannot read image {path} ({e}): give a PNG or JPEG file") from None


def cmd_predict(args, parser):
    from .engine.layers import softmax_forward
    model, meta = ckpt.load_model(checkpoint_or_shipped(args, parser), backend=args.backend)
    size = model.config.img_size
    images = np.stack([load_image(p, size) for p in args.images])                # [B, 3, H, W]
    x = normalize(model.xp.asarray(images), meta["mean"], meta["std"], model.config.dtype)
    probs, _ = softmax_forward(model.forward(x, keep_cache=False))
    probs = to_host(probs).astype(np.float64)
    k = min(args.top, probs.shape[1])
    results = []
    for path, pr in zip(args.images, probs):
        top = np.argsort(-pr)[:k]
        results.append({"image": str(path), "top": [{"class": CLASSES[c], "prob": float(pr[c])} for c in top]})
        print(f"{path}: " + ", ".join(f"{CLASSES[c]} {pr[c]:.3f}" for c in top))
    if args.out:
        _write_json_file(args.out, results)
    return 0


@contextlib.contextmanager
def writing_elsewhere_with(option):
    """A file that cannot be written: its one line ends with the way to write elsewhere."""
    try:
        yield
    except WriteError as e:
        e.args = (f"{e} (write elsewhere with {option})",)
        raise


def cmd_plot(args, parser):
    from .plots import plot_run
    if not Path(args.run_dir).is_dir():
        parser.error(f"RUN_DIR {args.run_dir} is not a folder; give a run folder written by `minivit train`")
    if args.out:
        _check_writable(parser, args.out)
    with writing_elsewhere_with("--out DIR"):
        written = plot_run(args.run_dir, out_dir=args.out)
    for path in written:
        print(path)
    return 0 if written else 1          # nothing drawn: matplotlib is missing (said above)


FLOAT32_NOTE = """Why float32 needs looser marks: float32 keeps about 7 significant digits, so
L = sum(out * G) carries a rounding error near 1e-7 * |L|. The centered difference divides
the difference of two such values by 2 eps: with eps = 1e-6 that error would be as large
as the gradient itself. A larger eps (3e-3) shrinks the rounding part but lets the O(eps^2)
curvature part grow, so a float32 check can only promise agreement to about 1e-2 relative
error, against about 1e-9 in float64. A correct backward passes both; use float64 to
prove a derivation, float32 to see that training precision behaves."""


def cmd_gradcheck(args, parser):
    names = [args.layer] if args.layer else [] if args.model else list(gradcheck.LAYERS)
    reports = [gradcheck.check_layer(name, args.dtype, args.backend, max_checks=args.max_checks)
               for name in names]
    if args.model or not args.layer:
        reports += gradcheck.check_models(args.dtype, args.backend, max_checks=args.max_checks,
                                          runners={"reference": None, "fast": one_thread})
        reports += fast_path_reports(args.dtype, args.backend, args.max_checks)
    for r in reports:
        print(r)
        print()
    if args.dtype == "float32":
        print(FLOAT32_NOTE)
        name = args.layer or "attention"
        tiny_eps = gradcheck.check_layer(name, "float32", args.backend, eps=1e-6)
        print(f"Shown on {name}: in float32 with eps = 1e-6 the worst relative error is "
              f"{tiny_eps.max_rel_err:.1e}, with eps = {gradcheck.TOLERANCES['float32'][0]:g} it is "
              f"{gradcheck.check_layer(name, 'float32', args.backend).max_rel_err:.1e}; in float64 "
              f"with eps = 3e-6 it is {gradcheck.check_layer(name, 'float64', args.backend).max_rel_err:.1e}.")
        print()
    failed = [r.title for r in reports if not r.passed]
    print(f"{len(reports) - len(failed)} passed, {len(failed)} failed" +
          (f": {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def cmd_attention(args, parser):
    from . import attention_maps as am
    path = checkpoint_or_shipped(args, parser)
    model, meta = ckpt.load_model(path, backend=args.backend)
    size = model.config.img_size
    if args.image:
        image = load_image(args.image, size)
        name, label = Path(args.image).stem, None
    else:
        folder, _ = data_or_sample(args.data if args.data is not None else meta.get("data_arg"),
                                   need="test", log=print)
        x_test, y_test = load_test(folder)
        if args.index >= len(y_test):
            parser.error(f"--index {args.index} is out of range: the test set has {len(y_test)} images")
        image, label = x_test[args.index], CLASSES[int(y_test[args.index])]
        name = f"test{args.index}"
    if not -model.config.depth <= args.layer < model.config.depth:
        parser.error(f"--layer {args.layer} is out of range: the model has {model.config.depth} blocks "
                     f"(0..{model.config.depth - 1}, or -1 for the last)")
    x = normalize(model.xp.asarray(image[None]), meta["mean"], meta["std"], model.config.dtype)
    logits, maps, readout = model.attention(x)
    pred = CLASSES[int(to_host(logits).argmax())]
    heads = am.to_grid(am.reader_attention(maps[args.layer], readout)[0])  # [heads, g, g]
    roll = am.to_grid(am.rollout(maps, readout)[0])                        # [g, g]
    pooled = None if readout is None else am.to_grid(readout[0])           # [g, g]
    layer = args.layer % model.config.depth
    reader = "the class token attends" if readout is None else f"the {model.config.pool} pooling's tokens attend"
    title = f"predicted {pred}" + (f" (true {label})" if label else "") + \
        f"; heads of block {layer}, as {reader}"
    # by default beside the checkpoint, in its run folder (runs/shipped-model for the shipped one)
    folder = Path("runs") / "shipped-model" if path == ckpt.SHIPPED_MODEL else Path(path).parent
    out = args.out or str(folder / f"attention-{name}.png")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    try:
        with writing_elsewhere_with("--out FILE.png"):
            am.draw(image, heads, roll, out, title, pooled)
    except ImportError:
        raise MissingPackage("matplotlib is not installed: `pip install -e .[plot]` to draw "
                             "attention maps") from None
    print(f"{title}\nwrote {out}")
    return 0


def cmd_selftest(args, parser):
    from .selftest import selftest
    checks = selftest(args.backend)
    return 0 if all(c.passed for c in checks) else 1


def cmd_download(args, parser):
    folder = download_cifar10(args.data)
    print(f"CIFAR-10 is in {folder}")
    return 0


def _write_json_file(path, obj):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json(path, obj)
    print(f"wrote {path}")


def cmd_exercises(args, parser):
    """List the course's exercises, write their stubs, or grade a file of them."""
    from .course import exercises, yours
    action = args.action or "list"
    if action == "list":
        print(exercises.listing())
        return 0
    if action == "new":
        yours.write_stubs(args.file)
        optional = sum(e.extra for e in exercises.EXERCISES)
        print(f"Wrote {args.file}: {len(exercises.EXERCISES) - optional} exercises and {optional} "
              f"optional ones, each a function to fill in.\n"
              f"Grade them with: minivit exercises check {args.file}")
        return 0
    namespace = yours.load(args.file)
    for name in args.names or []:
        exercises.exercise(name)                 # an unknown name: its error before any output
    print(f"Checking {args.file}: every gradient against finite differences and the engine's "
          f"(float64, then float32 for the dtype); the optimizer updates against the engine's")
    grading = []
    try:
        results = yours.check(namespace, args.names, every=args.all, on_start=grading.append,
                              on_result=lambda number, verdict: print(verdict.report(number), flush=True))
    except KeyboardInterrupt:
        print(f"\nminivit exercises: stopped while grading {grading[-1]}: a loop that never "
              f"ends there?", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(yours.summary(results) + ".")
    every_right = all(v.right for _, v in results)
    if every_right and not args.names:
        print(f"Every exercise is right: train a ViT on your gradients with "
              f"`minivit train --layers {args.file}`")
    return 0 if every_right else 1


COMMANDS = {"train": cmd_train, "exercises": cmd_exercises, "eval": cmd_eval, "predict": cmd_predict, "plot": cmd_plot,
            "gradcheck": cmd_gradcheck, "attention": cmd_attention, "selftest": cmd_selftest,
            "download": cmd_download}


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        world = distributed.world()
    except MinivitError as e:
        print(f"minivit {args.command}: error: {e}", file=sys.stderr)
        return e.exit_status
    try:
        return COMMANDS[args.command](args, args.parser)
    except BrokenPipeError:             # e.g. `minivit eval | head`: the reader left
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except Exception as e:
        # minivit's own errors (the user can fix them) are one line; anything else is a bug,
        # in minivit or in code of one's own, and keeps its traceback
        debug = args.debug or os.environ.get(DEBUG_ENV_VAR, "") not in ("", "0")
        show_traceback = debug or not isinstance(e, MinivitError)
        if world.size > 1:   # the other ranks may wait in a collective: stop them all
            world.abort(f"minivit {args.command}: rank {world.rank} failed: {type(e).__name__}: {e}",
                        getattr(e, "exit_status", 1), traceback.format_exc() if show_traceback else "")
        if show_traceback:
            raise
        print(f"minivit {args.command}: error: {e}", file=sys.stderr)
        return e.exit_status                 # 2, or 1 when a run could not go on
    except KeyboardInterrupt:
        print(f"\nminivit {args.command}: interrupted; every checkpoint on disk is complete "
              f"(continue a training run with: minivit train --resume --out RUN_DIR)", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
