"""Training on CIFAR-10: presets, the training loop, evaluation and run folders.

    from minivit.train import TrainConfig, train
    summary = train(TrainConfig.from_preset("sample", epochs=3), data=None, out="runs/try")

A run folder holds:
    config.json      the full training configuration
    metrics.jsonl    one JSON line per epoch (loss, accuracies, learning rate, speed)
    checkpoint.npz   the last completed epoch, or the batch where Ctrl-C stopped it (model,
                     optimizer, schedule position)
    best.npz         the epoch with the best validation accuracy
    summary.json     final test accuracy, overall and per class (at the end)
    predictions.npz  test labels, predictions and a few images, for the plots
    *.png            plots (when matplotlib is installed)
Every file is written atomically, so a run killed at any moment keeps its last good
checkpoint, and `--resume` continues exactly where it stopped.
"""

import contextlib
import dataclasses
import json
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import checkpoint as ckpt
from .backend import to_host
from .data import (CLASSES, SAMPLE_ROOT, Loader, channel_stats, dataset_folder, find_cifar10,
                   load_cifar10, mix_batch, random_erase, split_validation, atomic_write, write_json,
                   write_jsonl)
from .loss import cross_entropy
from .layers import GELU_KINDS
from .model import DTYPES, POOLS, ViT
from .optim import EMA, Adam, AdamW, clip_grad_norm, warmup_cosine


@dataclass
class TrainConfig:
    preset: str = "default"
    # model
    patch_size: int = 4
    embed_dim: int = 192
    depth: int = 6
    num_heads: int = 3
    mlp_ratio: float = 4.0
    gelu: str = "exact"
    dtype: str = "float32"
    # optimization
    optimizer: str = "adamw"            # "adam" or "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05          # AdamW: on weight matrices only
    betas: tuple = (0.9, 0.999)
    batch_size: int = 128
    epochs: int = 50
    warmup_epochs: float = 5.0
    schedule: str = "cosine"            # "cosine" (after warmup) or "constant"
    min_lr: float = 1e-5
    clip_grad: float = 1.0              # global gradient norm cap; 0 turns it off
    label_smoothing: float = 0.1
    drop_path: float = 0.0              # stochastic depth rate of the last block
    pool: str = "cls"                   # what the head reads: "cls" token or "mean" of patches
    # data
    augment: bool = True                # random crop (padding 4) + horizontal flip
    randaugment: int = 0                # RandAugment operations per image; 0 turns it off
    randaugment_magnitude: float = 9.0  # their strength, 0..10
    mixup: float = 0.0                  # mixup Beta(alpha, alpha); 0 turns it off
    cutmix: float = 0.0                 # cutmix Beta(alpha, alpha); 0 turns it off
    random_erase: float = 0.0           # probability of erasing a box of each image
    ema: float = 0.0                    # decay of a weight average used for evaluation; 0: off
    val_fraction: float = 0.1
    limit_train: int = 0                # use only this many training images (0: all)
    eval_batch_size: int = 500
    seed: int = 0

    @classmethod
    def from_dict(cls, d):
        """The configuration saved in a checkpoint (JSON turned the betas into a list)."""
        return cls(**{**d, "betas": tuple(d["betas"])})

    @classmethod
    def from_preset(cls, name, **overrides):
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
        cfg = cls(preset=name, **PRESETS[name])
        return dataclasses.replace(cfg, **overrides)

    def validate(self):
        """Raise ValueError naming the first bad field."""
        positive = ("patch_size", "embed_dim", "depth", "num_heads", "batch_size", "epochs",
                    "eval_batch_size", "lr", "mlp_ratio")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("weight_decay", "warmup_epochs", "min_lr", "clip_grad", "limit_train"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}: use adam or adamw")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"unknown schedule {self.schedule!r}: use cosine or constant")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.pool not in POOLS:
            raise ValueError(f"unknown pool {self.pool!r}: use one of {', '.join(POOLS)}")
        if not 0 <= self.drop_path < 1:
            raise ValueError(f"drop_path must be in [0, 1), got {self.drop_path}")
        for name in ("mixup", "cutmix"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} (a Beta alpha) must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema (a decay) must be in [0, 1), got {self.ema}")
        if self.randaugment < 0:
            raise ValueError(f"randaugment (operations per image) must be >= 0, got {self.randaugment}")
        if not 0 <= self.randaugment_magnitude <= 10:
            raise ValueError(f"randaugment_magnitude must be in [0, 10], got {self.randaugment_magnitude}")
        if not 0 <= self.random_erase <= 1:
            raise ValueError(f"random_erase must be in [0, 1], got {self.random_erase}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}: use one of {', '.join(DTYPES)}")
        if self.gelu not in GELU_KINDS:
            raise ValueError(f"unknown gelu {self.gelu!r}: use one of {', '.join(GELU_KINDS)}")
        if 32 % self.patch_size:
            raise ValueError(f"patch_size {self.patch_size} does not divide the image size 32")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")

    def model_config(self):
        return dict(img_size=32, patch_size=self.patch_size, in_chans=3, embed_dim=self.embed_dim,
                    depth=self.depth, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
                    num_classes=len(CLASSES), dtype=self.dtype, gelu=self.gelu,
                    drop_path=self.drop_path, pool=self.pool)


PRESETS = {
    # The reference post's recipe: Adam 3e-4, batch 80, 30 epochs, nothing else.
    "seed": dict(optimizer="adam", lr=3e-4, weight_decay=0.0, batch_size=80, epochs=30,
                 warmup_epochs=0.0, schedule="constant", clip_grad=0.0, label_smoothing=0.0,
                 augment=False),
    # The same ViT with a modern recipe: AdamW with decay on weight matrices, warmup +
    # cosine, label smoothing, gradient clipping, crop + flip augmentation.
    "default": dict(),
    # A small ViT for a short run on a CPU (the shipped sample trains in a few minutes).
    "sample": dict(embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0, batch_size=64, epochs=15,
                   warmup_epochs=1.0, lr=2e-3),
}


def decay_groups(model, weight_decay):
    """Parameter groups for AdamW: weight matrices (and the conv kernel) decay; biases,
    LayerNorm weights, the class token and the position embedding do not."""
    decay, no_decay = [], []
    for p in model.parameters():
        is_embedding = p.name.startswith("vit_embed.")
        (decay if p.data.ndim >= 2 and not is_embedding else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(cfg, model):
    if cfg.optimizer == "adam":
        return Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return AdamW(decay_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)


def lr_at(cfg, step, steps_per_epoch):
    if cfg.schedule == "constant":
        warm = int(cfg.warmup_epochs * steps_per_epoch)
        return cfg.lr * min(1.0, (step + 1) / warm) if warm else cfg.lr
    return warmup_cosine(step, cfg.epochs * steps_per_epoch, cfg.lr,
                         int(cfg.warmup_epochs * steps_per_epoch), cfg.min_lr)


def regularize(cfg, images, labels, rng):
    """The batch-level regularizers of cfg: random erasing, then mixup or cutmix
    -> (images, targets); targets are the labels, or soft targets when mixing."""
    if cfg.random_erase:
        images = random_erase(images, rng, cfg.random_erase)
    if cfg.mixup or cfg.cutmix:
        return mix_batch(images, labels, len(CLASSES), rng, cfg.mixup, cfg.cutmix)
    return images, labels


def evaluate(model, loader):
    """-> (mean loss, accuracy, predictions int [N] on the host), no gradients kept."""
    total_loss, preds = 0.0, []
    xp = model.xp
    for images, labels in loader:
        logits = model.forward(images, keep_cache=False)
        loss, _ = cross_entropy(logits, labels)
        total_loss += float(loss) * len(labels)
        preds.append(to_host(xp.argmax(logits, axis=1)))
    preds = np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)
    y = to_host(loader.y)
    n = max(1, len(y))
    return total_loss / n, float((preds == y).mean()) if len(y) else 0.0, preds


def per_class_accuracy(y_true, y_pred, num_classes=len(CLASSES)):
    return [float((y_pred[y_true == c] == c).mean()) if (y_true == c).any() else float("nan")
            for c in range(num_classes)]


def confusion_matrix(y_true, y_pred, num_classes=len(CLASSES)):
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (y_true, y_pred), 1)
    return m


def prepare_data(cfg, data):
    """Find and load the data -> (dict of splits, description). data=None uses the full
    CIFAR-10 when found, else the shipped sample."""
    folder = find_cifar10(data)
    if folder is None:
        folder = dataset_folder(SAMPLE_ROOT)
        source = "sample"
    else:
        source = "cifar10"
    d = load_cifar10(folder)
    x, y = d["x_train"], d["y_train"]
    if cfg.limit_train:
        x, y = x[:cfg.limit_train], y[:cfg.limit_train]
    x_tr, y_tr, x_val, y_val = split_validation(x, y, cfg.val_fraction, seed=cfg.seed)
    return dict(x_train=x_tr, y_train=y_tr, x_val=x_val, y_val=y_val, x_test=d["x_test"],
                y_test=d["y_test"], folder=str(folder), source=source)


def read_metrics(run_dir):
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class _StopRequest:
    """Turns Ctrl-C (SIGINT) and SIGTERM into a flag that the loop reads between steps,
    so a step (and the optimizer's in-place update) is never cut in half. A second
    Ctrl-C stops at once; the checkpoint on disk is still whole (atomic writes)."""

    def __init__(self):
        self.signal, self._old = None, {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:       # not the main thread: leave signals as they are
                pass
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _check_finite(model, loss, step, epoch, batch, last_path):
    """Stop at the first step whose loss or gradients hold NaN or Inf, naming the tensor."""
    xp = model.xp
    bad = None
    if not bool(xp.isfinite(loss)):
        bad = f"the loss is {float(loss)}"
    elif not bool(xp.isfinite(model.flat_grads).all()):
        names = [k for k, g in model.grads().items() if not bool(xp.isfinite(g).all())]
        more = f" (and {len(names) - 1} more tensors)" if len(names) > 1 else ""
        bad = f"the gradient of {names[-1]}{more} holds NaN or Inf"
    if bad:
        raise FloatingPointError(
            f"step {step} (epoch {epoch}, batch {batch}): {bad}. Training stopped before the "
            f"weights were updated; the last good checkpoint {last_path} is intact. Lower --lr "
            f"or set --clip-grad, then start again (or --resume from it)")


def train(cfg, data=None, out="runs/run", *, resume=False, backend=None, progress=True,
          plots=True, log=print, stop_after_epochs=None, on_step=None, on_epoch=None):
    """Train a ViT with cfg; write everything into the run folder out. Returns the summary
    (None when the run stopped before its last epoch).

    resume: continue from out/checkpoint.npz (its configuration is used), from the
        batch after the last one it saved.
    stop_after_epochs: stop after this many epochs in this call (resume later).
    on_step(step), on_epoch(record): called after every step / epoch (for monitoring).
    Ctrl-C or SIGTERM saves a checkpoint after the current step and raises KeyboardInterrupt.
    """
    out = Path(out)
    last_path, best_path = out / "checkpoint.npz", out / "best.npz"
    start_epoch, step, best_acc, in_epoch = 0, 0, -1.0, None
    if resume:
        if not last_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {last_path}; start a new run "
                                    f"without --resume, or point --out at an earlier run folder")
        weights, optim_state, meta = ckpt.load(last_path)
        cfg = TrainConfig.from_dict(meta["train"])
        data = data if data is not None else meta.get("data_arg")
        start_epoch, step, best_acc = meta["epoch"], meta["step"], meta["best_val_acc"]
        in_epoch = meta.get("in_epoch")
    elif last_path.exists():
        raise FileExistsError(f"{out} already holds a run (checkpoint.npz): pass --resume to "
                              f"continue it, or choose another --out")
    cfg.validate()
    out.mkdir(parents=True, exist_ok=True)

    d = prepare_data(cfg, data)
    if d["source"] == "sample":
        log(f"Full CIFAR-10 not found: training on the shipped sample ({len(d['y_train'])} train, "
            f"{len(d['y_val'])} validation, {len(d['y_test'])} test images) in {d['folder']}. "
            f"Pass --data DIR or set MINIVIT_DATA for the full data set.")
    mean, std = channel_stats(d["x_train"])
    model = ViT(**cfg.model_config(), backend=backend, seed=cfg.seed)
    xp = model.xp
    opt = make_optimizer(cfg, model)
    ema = EMA(model, cfg.ema) if cfg.ema else None
    if resume:
        model.load_state_dict(weights)
        opt.load_state_dict({**meta["optimizer"], **optim_state})
        if ema is not None:
            ema.load_state_dict({**meta["ema"], "shadow": optim_state["ema.shadow"]})
        # forget metrics of epochs after the checkpoint (from a run killed after writing them)
        kept = [m for m in read_metrics(out) if m["epoch"] <= start_epoch]
        write_jsonl(out / "metrics.jsonl", kept)
        where = f"epoch {start_epoch + 1} batch {in_epoch['batch']}" if in_epoch else f"epoch {start_epoch}"
        log(f"Resuming {out} after {where} (step {step}).")
    write_json(out / "config.json", dataclasses.asdict(cfg))

    train_loader = Loader(d["x_train"], d["y_train"], cfg.batch_size, xp, mean, std, shuffle=True,
                          augment=cfg.augment, seed=cfg.seed, dtype=cfg.dtype,
                          drop_last=len(d["y_train"]) > cfg.batch_size,
                          randaugment=(cfg.randaugment, cfg.randaugment_magnitude))
    val_loader = Loader(d["x_val"], d["y_val"], cfg.eval_batch_size, xp, mean, std, dtype=cfg.dtype)
    steps_per_epoch = len(train_loader)
    log(f"Model: {model.num_parameters():,} parameters on {model.backend}; preset {cfg.preset}; "
        f"{cfg.epochs} epochs x {steps_per_epoch} steps of batch {cfg.batch_size}.")
    meta_base = dict(train=dataclasses.asdict(cfg), data_arg=None if data is None else str(data),
                     mean=mean.tolist(), std=std.tolist(), classes=list(CLASSES))

    end_epoch = cfg.epochs if stop_after_epochs is None else min(cfg.epochs, start_epoch + stop_after_epochs)
    with _StopRequest() as stop:
        for epoch in range(start_epoch + 1, end_epoch + 1):
            part = in_epoch or dict(batch=0, loss_sum=0.0, correct=0, seen=0, seconds=0.0)
            in_epoch = None
            run_loss = xp.asarray(part["loss_sum"], dtype=np.float64)   # on the device: no sync
            run_correct = xp.asarray(part["correct"], dtype=np.int64)
            seen, t0 = part["seen"], time.perf_counter() - part["seconds"]
            bar = _progress(steps_per_epoch, f"epoch {epoch}/{cfg.epochs}", progress, part["batch"])
            for i, (images, labels) in enumerate(train_loader.batches(epoch, part["batch"]), part["batch"]):
                opt.lr = lr_at(cfg, step, steps_per_epoch)
                brng = np.random.default_rng([cfg.seed, epoch, i, 1])   # per batch: resumable
                images, targets = regularize(cfg, images, labels, brng)
                logits = model.forward(images, rng=brng if cfg.drop_path else None)
                loss, dlogits = cross_entropy(logits, targets, cfg.label_smoothing)
                model.zero_grad()
                model.backward(dlogits)
                _check_finite(model, loss, step + 1, epoch, i + 1, last_path)
                if cfg.clip_grad:
                    clip_grad_norm(model.parameters(), cfg.clip_grad)
                opt.step()
                if ema is not None:
                    ema.update()
                step += 1
                run_loss += loss * len(labels)
                run_correct += (xp.argmax(logits, axis=1) == labels).sum()
                seen += len(labels)
                if bar is not None and (i % 10 == 9 or i == steps_per_epoch - 1):
                    bar.update(i + 1 - bar.n)
                    bar.set_postfix(loss=f"{float(run_loss) / seen:.3f}", acc=f"{float(run_correct) / seen:.3f}",
                                    img_s=f"{seen / (time.perf_counter() - t0):.0f}")
                if on_step is not None:
                    on_step(step)
                if stop.signal and i + 1 < steps_per_epoch:
                    if bar is not None:
                        bar.close()
                    part = dict(batch=i + 1, loss_sum=float(run_loss), correct=int(run_correct),
                                seen=seen, seconds=time.perf_counter() - t0)
                    ckpt.save(last_path, model, dict(meta_base, epoch=epoch - 1, step=step,
                                                     best_val_acc=best_acc, in_epoch=part),
                              optimizer=opt, ema=ema)
                    log(f"{stop.signal}: saved {last_path} at epoch {epoch}, batch {i + 1} of "
                        f"{steps_per_epoch}; continue with: minivit train --resume --out {out}")
                    raise KeyboardInterrupt
            if bar is not None:
                bar.close()
            train_loss = float(run_loss) / max(1, seen)
            train_time = time.perf_counter() - t0
            with ema.applied() if ema is not None else contextlib.nullcontext():
                val_loss, val_acc, _ = evaluate(model, val_loader)   # the averaged weights, if any
                is_best = val_acc > best_acc
                best_acc = max(best_acc, val_acc)
                meta = dict(meta_base, epoch=epoch, step=step, best_val_acc=best_acc, in_epoch=None)
                if is_best:            # best.npz holds the weights that were evaluated
                    ckpt.save(best_path, model, meta)
            record = dict(epoch=epoch, step=step, lr=opt.lr, train_loss=train_loss,
                          train_acc=float(run_correct) / max(1, seen), val_loss=val_loss, val_acc=val_acc,
                          epoch_seconds=round(train_time, 3), images_per_second=round(seen / train_time, 1))
            # metrics, best.npz, then checkpoint.npz: a run killed before the checkpoint
            # redoes this epoch on resume (dropping this line and rewriting best.npz alike)
            write_jsonl(out / "metrics.jsonl", read_metrics(out) + [record])
            ckpt.save(last_path, model, meta, optimizer=opt, ema=ema)
            log(f"epoch {epoch:3d}  train loss {train_loss:.4f} acc {record['train_acc']:.4f}  "
                f"val loss {val_loss:.4f} acc {val_acc:.4f}  {train_time:.1f}s"
                f"  {'(best)' if is_best else ''}".rstrip())
            if on_epoch is not None:
                on_epoch(record)
            if stop.signal and epoch < cfg.epochs:
                log(f"{stop.signal}: stopped after epoch {epoch}, saved in {last_path}; continue "
                    f"with: minivit train --resume --out {out}")
                raise KeyboardInterrupt

    if end_epoch < cfg.epochs:
        log(f"Stopped after epoch {end_epoch}; continue with --resume --out {out}")
        return None
    return finish(out, backend=backend, log=log, plots=plots, data=d)


def finish(out, backend=None, log=print, plots=True, data=None):
    """Score best.npz on the test set; write summary.json, predictions.npz and plots."""
    out = Path(out)
    model, meta = ckpt.load_model(out / "best.npz", backend=backend)
    cfg = TrainConfig.from_dict(meta["train"])
    d = data if data is not None else prepare_data(cfg, meta.get("data_arg"))
    loader = Loader(d["x_test"], d["y_test"], cfg.eval_batch_size, model.xp, meta["mean"],
                    meta["std"], dtype=cfg.dtype)
    test_loss, test_acc, preds = evaluate(model, loader)
    per_class = per_class_accuracy(d["y_test"], preds)
    summary = dict(test_acc=test_acc, test_loss=test_loss, test_images=int(len(preds)),
                   best_epoch=meta["epoch"], best_val_acc=meta["best_val_acc"], data=d["source"],
                   per_class_acc=dict(zip(CLASSES, per_class)), preset=cfg.preset,
                   parameters=model.num_parameters(), backend=model.backend)
    write_json(out / "summary.json", summary)
    atomic_write(out / "predictions.npz", lambda f: np.savez(
        f, y_true=d["y_test"], y_pred=preds, images=d["x_test"][:32]))
    log(f"Test accuracy (best epoch {meta['epoch']}): {test_acc:.4f} on {len(preds)} images")
    if plots:
        from .plots import plot_run
        written = plot_run(out, log=log)
        if written:
            log("Plots: " + ", ".join(str(p) for p in written))
    log(f"Outputs in {out}/ (checkpoint.npz, best.npz, metrics.jsonl, summary.json)")
    return summary


def _progress(total, desc, enabled, done=0):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=done, desc=desc, leave=False, dynamic_ncols=True)
