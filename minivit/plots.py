"""Plots of a run folder: learning curves, per-class accuracy, a grid of test images
with their predicted and true labels, and the confusion matrix. Drawn with matplotlib
(the optional extra `pip install -e .[plot]`); without it a message says so and nothing
breaks."""

import io
import json
from pathlib import Path

import numpy as np

from .config import TrainConfig
from .data import CLASSES
from .errors import BadValue
from .evaluate import confusion_matrix, per_class_accuracy
from .files import atomic_write, read_jsonl
from .schedule import resize_stages


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write(path, lambda f: f.write(buf.getvalue()))


CHANCE = 1 / len(CLASSES)        # the accuracy of guessing


def resolution_switches(metrics, config):
    """Where progressive resizing (config's low_res, mid_res) moved to larger images, as
    [(minutes of training, "16px -> 32px images")]: with a time budget at those shares of
    it, else at those shares of the steps (placed in time through the epochs' steps and
    seconds); switches after the last record are left out."""
    if not config or not metrics:
        return []
    stages = resize_stages(TrainConfig.from_dict(config))
    labels = [f"{a}px -> {b}px images" for (_, a), (_, b) in zip(stages, stages[1:])]
    if config.get("time_budget"):
        return [(end * config["time_budget"] / 60, label) for (end, _), label in zip(stages, labels)]
    steps_per_epoch = metrics[0]["step"] / metrics[0]["epoch"]
    steps = [0] + [m["step"] for m in metrics]
    seconds = [0.0] + [m["train_seconds"] for m in metrics]
    switches = [(end * config["epochs"] * steps_per_epoch, label) for (end, _), label in zip(stages, labels)]
    return [(float(np.interp(s, steps, seconds)) / 60, label) for s, label in switches if s <= steps[-1]]


def draw_curves(plt, metrics, config=None):
    """Loss, accuracy (with the chance line) and learning rate -> a figure. Against
    minutes of training when the records have them (epochs on a second axis above: a
    time-budget schedule runs on the clock, and epochs differ in length), else against
    epochs; progressive resizing's switch to full-size images (config: the run's
    config.json) is marked on every panel."""
    timed = all("train_seconds" in m for m in metrics)
    x_of = (lambda m: m["train_seconds"] / 60) if timed else (lambda m: m["epoch"])
    xs = [x_of(m) for m in metrics]
    validated = [m for m in metrics if m.get("val_acc") is not None]    # none without a split
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(14, 3.8))
    a1.plot(xs, [m["train_loss"] for m in metrics], "o-", label="train")
    a1.plot([x_of(m) for m in validated], [m["val_loss"] for m in validated], "o-", label="validation")
    a1.set(ylabel="cross-entropy", title="loss")
    a2.plot(xs, [m["train_acc"] for m in metrics], "o-", label="train")
    a2.plot([x_of(m) for m in validated], [m["val_acc"] for m in validated], "o-", label="validation")
    a2.axhline(CHANCE, color="gray", ls=":", label="chance")
    a2.set(ylabel="accuracy", title="accuracy", ylim=(0, 1))
    a3.plot(xs, [m["lr"] for m in metrics], "o-", color="tab:green")
    a3.set(ylabel="learning rate", title="learning rate (at the epoch's end)")
    a3.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    switches = resolution_switches(metrics, config) if timed else []
    epoch_axis = timed and len(metrics) > 1            # the epochs, above the minutes
    if epoch_axis:
        clock, epochs = [0.0] + xs, [0] + [m["epoch"] for m in metrics]
        to_epoch = (lambda t: np.interp(t, clock, epochs), lambda e: np.interp(e, epochs, clock))
        ticks = [e for e in plt.MaxNLocator(integer=True).tick_values(0, epochs[-1])
                 if 0 <= e <= epochs[-1]]              # none past the last epoch
    for ax in (a1, a2, a3):
        ax.set_xlabel("minutes of training" if timed else "epoch")
        for (minutes, label), ls in zip(switches, ("--", ":")):
            ax.axvline(minutes, color="tab:purple", ls=ls, lw=1, label=label)
        if epoch_axis:
            top = ax.secondary_xaxis("top", functions=to_epoch)
            top.set_ticks(ticks)
            top.set_xlabel("epoch", fontsize=8)
            ax.set_title(ax.get_title(), pad=26)
    if timed:
        a3.yaxis.get_offset_text().set_x(-0.12)       # the 1e-3 clear of the epochs above
    a1.legend()
    a2.legend()
    return fig


def draw_per_class(plt, y_true, y_pred):
    """Test accuracy per class, each bar labelled with its value, with the overall
    accuracy and chance -> a figure."""
    acc = per_class_accuracy(y_true, y_pred)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    bars = ax.bar(CLASSES, acc, color="tab:blue")
    ax.bar_label(bars, labels=[f"{a:.0%}" for a in acc], fontsize=8)
    ax.axhline(float((y_true == y_pred).mean()), color="k", ls="--", label="overall")
    ax.axhline(CHANCE, color="gray", ls=":", label="chance")
    ax.set(ylabel="test accuracy", ylim=(0, 1.08), title="per-class test accuracy")
    ax.tick_params(axis="x", rotation=45)
    ax.legend(loc="lower right")
    return fig


def draw_time_curves(plt, runs):
    """Validation accuracy against minutes of training, one line per run; runs: a list of
    (label, metrics) with metrics as in metrics.jsonl -> a figure."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, metrics in runs:
        points = [(m["train_seconds"] / 60, m["val_acc"]) for m in metrics if m.get("val_acc") is not None]
        ax.plot([t for t, _ in points], [a for _, a in points], "o-", ms=3, label=label)
    ax.axhline(CHANCE, color="gray", ls=":", label="chance")
    ax.set(xlabel="minutes of training", ylabel="validation accuracy", ylim=(0, 1),
           title="validation accuracy against training time")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def plot_time_curves(runs, path, log=print):
    """Write draw_time_curves(runs) to path; returns the path, or None without matplotlib."""
    plt = _pyplot()
    if plt is None:
        log("matplotlib is not installed, so no plot was drawn: `pip install -e .[plot]`")
        return None
    fig = draw_time_curves(plt, runs)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    _save(fig, Path(path))
    plt.close(fig)
    return Path(path)


def plot_run(run_dir, log=print, out_dir=None):
    """Write curves.png, per_class.png, predictions.png and confusion.png into out_dir
    (default run_dir) from run_dir's metrics.jsonl and predictions.npz; returns the paths."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    plt = _pyplot()
    if plt is None:
        log("matplotlib is not installed, so no plots were drawn: `pip install -e .[plot]`, "
            f"then `minivit plot {run_dir}`")
        return []
    metrics = read_jsonl(run_dir / "metrics.jsonl", log)
    if not metrics:
        raise BadValue(f"no metrics.jsonl in {run_dir}: is it a run folder written by "
                                f"`minivit train`?")
    written = []
    config_path = run_dir / "config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else None
    fig = draw_curves(plt, metrics, config)
    _save(fig, out_dir / "curves.png")
    plt.close(fig)
    written.append(out_dir / "curves.png")

    pred_path = run_dir / "predictions.npz"
    if not pred_path.exists():
        log(f"no predictions.npz in {run_dir} (a run writes it when it finishes): only curves drawn")
        return written
    with np.load(pred_path, allow_pickle=False) as f:
        y_true, y_pred, images = f["y_true"], f["y_pred"], f["images"]
    fig = draw_per_class(plt, y_true, y_pred)
    _save(fig, out_dir / "per_class.png")
    plt.close(fig)
    written.append(out_dir / "per_class.png")

    n = min(len(images), 32)
    fig, axes = plt.subplots(4, 8, figsize=(12, 6.6))
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i].transpose(1, 2, 0))
            ok = y_pred[i] == y_true[i]
            ax.set_title(f"{CLASSES[y_pred[i]]}\n({CLASSES[y_true[i]]})", fontsize=8,
                         color="green" if ok else "red")
    fig.suptitle("test images: predicted (true)")
    _save(fig, out_dir / "predictions.png")
    plt.close(fig)
    written.append(out_dir / "predictions.png")

    cm = confusion_matrix(y_true, y_pred)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(cm, cmap="Blues")
    for (r, c), v in np.ndenumerate(cm):
        ax.text(c, r, str(v), ha="center", va="center", fontsize=7,
                color="white" if v > cm.max() / 2 else "black")
    ax.set_xticks(range(10), CLASSES, rotation=45, ha="right")
    ax.set_yticks(range(10), CLASSES)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix (test)")
    fig.colorbar(im)
    _save(fig, out_dir / "confusion.png")
    plt.close(fig)
    written.append(out_dir / "confusion.png")
    return written
