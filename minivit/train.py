"""Training on CIFAR-10: the training loop and its run folder.

    from minivit.config import TrainConfig
    from minivit.train import train
    summary = train(TrainConfig.from_preset("sample", epochs=3), out="runs/try")

The loop, as it reads below: train() opens the run folder and builds a Run (start_run),
then for every epoch train_epoch() calls train_step() on each batch and end_of_epoch()
validates and saves; finish() scores the test set.

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

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import augment, distributed, fast, seeds
from . import checkpoint as ckpt
from .config import TrainConfig
from .data import CLASSES, Loader, channel_stats, data_or_sample, load_cifar10, split_validation
from .engine import loss, optim, resize
from .engine.backend import get_xp
from .engine.draws import StepDraws
from .engine.model import ViT
from .errors import BadValue
from .evaluate import evaluate, score_checkpoint
from .files import atomic_write, read_jsonl, write_json, write_jsonl
from .guards import NonFiniteGuard, StopRequest
from .plots import plot_run
from .schedule import image_size_at, lr_at, resize_stages
from .whiten import whiten_stem


MUON_PREFIXES = ("blocks.", "patch_embed.")


def decay_groups(model, weight_decay):
    """Parameter groups for AdamW: weight matrices (and the conv kernel) decay; biases,
    LayerNorm weights, the class token and the position embedding do not."""
    decay, no_decay = [], []
    for p in model.parameters():
        is_embedding = p.name.startswith("vit_embed.")
        (decay if p.data.ndim >= 2 and not is_embedding else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(cfg, model):
    """cfg's optimizer for model's parameters (Muon: the fast path's, whose stacks share
    the CPU's threads, unless cfg trains the engine itself)."""
    if cfg.optimizer == "adam":
        return optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    groups = decay_groups(model, cfg.weight_decay)
    if cfg.optimizer == "muon":      # the blocks' matrices and the patch embedding by Muon
        matrices = [p for p in groups[0]["params"] if p.name.startswith(MUON_PREFIXES)]
        groups[0]["params"] = [p for p in groups[0]["params"] if p not in matrices]
        muon = fast.Muon if cfg.engine == "fast" else optim.Muon
        return muon(matrices, groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def make_net(cfg, model, threads=None):
    """What runs model's forward and backward -> (net, cross_entropy): the fast path and
    its fused loss, or (cfg.engine "reference") the engine's ViT and loss as they read."""
    if cfg.engine == "reference":
        return model, loss.cross_entropy
    return fast.FastRunner(model, threads=threads), fast.cross_entropy


def prepare_data(cfg, data, log=None):
    """Load the splits -> dict of x/y train, val, test. data=None takes the full CIFAR-10
    when found, else the shipped sample (saying so through log)."""
    folder, _ = data_or_sample(data, log=log)
    d = load_cifar10(folder)
    x, y = d["x_train"], d["y_train"]
    if cfg.limit_train:
        x, y = x[:cfg.limit_train], y[:cfg.limit_train]
    x_tr, y_tr, x_val, y_val = split_validation(x, y, cfg.val_fraction, seed=cfg.seed)
    return dict(x_train=x_tr, y_train=y_tr, x_val=x_val, y_val=y_val, x_test=d["x_test"],
                y_test=d["y_test"])


def new_epoch_totals():
    """The running totals of an epoch in progress (saved in mid-epoch checkpoints)."""
    return dict(batch=0, loss_sum=0.0, correct=0, seen=0, seconds=0.0)


@dataclasses.dataclass
class Run:
    """A training run: what trains, where it writes, and where it stands (the last six
    fields: its position, saved in every checkpoint by save_checkpoint, put back by restore)."""
    cfg: TrainConfig
    out: Path                          # the run folder
    world: distributed.World           # the processes training together; rank 0 writes
    model: ViT
    net: object                        # runs the model: the fast path, or the ViT itself
    loss: Callable                     # cross_entropy(logits, targets, smoothing), net's
    opt: optim.Adam                    # Adam, AdamW or Muon
    ema: Optional[optim.EMA]           # the weight average evaluated, or None
    train_loader: Loader
    val_loader: Loader
    guard: NonFiniteGuard              # stops the run at a NaN or Inf step
    meta: dict                         # what every checkpoint's meta starts from
    log: Callable = print
    progress: bool = True              # show a progress bar
    on_step: Optional[Callable] = None  # on_step(step) after every step
    epoch: int = 0                     # epochs completed
    step: int = 0                      # optimizer steps taken
    best_val_acc: float = -1.0
    train_seconds: float = 0.0         # training time of the completed epochs
    totals: dict = dataclasses.field(default_factory=new_epoch_totals)   # the epoch in progress
    out_of_time: bool = False          # the time budget is spent
    compiled: bool = True              # False on a GPU until its first step compiled the kernels


def train(cfg, data=None, out="runs/run", *, resume=False, init_from=None, backend=None,
          progress=True, plots=True, log=print, stop_after_epochs=None, on_step=None,
          on_epoch=None, world=None):
    """Train a ViT with cfg; write everything into the run folder out (a new or empty
    folder). Returns the summary (None when the run stopped before its last epoch).

    resume: continue from out/checkpoint.npz (its configuration is used), from the
        batch after the last one it saved.
    init_from: a checkpoint whose weights the new run starts from (fine-tuning, or more
        training with a new schedule); cfg's model fields must match its model.
    stop_after_epochs: stop after this many epochs in this call (resume later).
    on_step(step), on_epoch(record): called after every step / epoch (for monitoring).
    world: the processes training together (default distributed.world(): every rank of
        an MPI job, else this process alone); rank 0 alone logs and writes files.
    Ctrl-C or SIGTERM saves a checkpoint after the current step and raises KeyboardInterrupt.
    """
    world = world or distributed.world()
    if not world.main:
        log, progress, plots = (lambda *a: None), False, False
    out = Path(out)
    saved = check_run_folder(out, resume, world)     # with resume: the checkpoint to continue
    if saved is not None:
        cfg = TrainConfig.from_dict(saved[2]["train"])
        data = data if data is not None else saved[2].get("data_arg")
    cfg.validate()
    fast.tune_host_allocator()
    run = start_run(cfg, data, out, world, saved=saved, init_from=init_from, backend=backend,
                    log=log, progress=progress, on_step=on_step)

    last_epoch = 10 ** 9 if cfg.time_budget else cfg.epochs     # a budget ends on the clock
    end_epoch = last_epoch if stop_after_epochs is None else min(last_epoch, run.epoch + stop_after_epochs)
    with StopRequest() as stop:
        while run.epoch < end_epoch and not run.out_of_time:
            train_epoch(run, stop)                       # may save mid-epoch and raise
            record = end_of_epoch(run)
            if on_epoch is not None:
                on_epoch(record)
            stopped = world.any(stop.signal is not None)   # every rank decides alike
            if stopped and run.epoch < last_epoch and not run.out_of_time:
                log(f"{stop.reason()}: stopped after epoch {run.epoch}, saved in "
                    f"{out / 'checkpoint.npz'}; continue with: minivit train --resume --out {out}")
                raise KeyboardInterrupt

    if end_epoch < last_epoch and not run.out_of_time:
        log(f"Stopped after epoch {end_epoch}; continue with --resume --out {out}")
        return None
    with run.ema.applied() if run.ema is not None else contextlib.nullcontext():
        save_checkpoint(run, out / "final.npz", weights_only=True)   # the weights evaluated last
    world.barrier()                      # every rank reads what rank 0 wrote
    return finish(out, backend=backend, log=log, plots=plots, data=data, world=world)


def train_step(run, images, labels, epoch, i, elapsed):
    """One optimization step on batch i of epoch: learning rate, regularizers, forward,
    loss, backward, the gradient summed over ranks, the NaN watch, clipping, the update
    and the weight average. Nothing here reads the device, so the host never waits for
    the GPU. -> (loss, logits, rows): this rank's loss (0-d), logits and rows of the batch.

    With several ranks every rank builds the same batch, runs its rows, and the gradients
    are summed (distributed.py); each rank's loss is weighted by its share of the batch."""
    cfg, model, world = run.cfg, run.model, run.world
    steps = len(run.train_loader)
    run.opt.lr = lr_at(cfg, run.step, steps, elapsed)
    images, targets = augment.regularize(cfg, images, labels, epoch, i)
    size = image_size_at(cfg, run.step, steps, elapsed)
    if size != cfg.img_size:                                         # [B, C, size, size]
        images, _ = resize.area_resize_forward(images, size)
    rows, batch = world.part(len(labels)), len(labels)               # this rank's rows
    draws = StepDraws.sample(cfg, batch, seeds.generator(cfg.seed, epoch, i, "drop_path")
                             if cfg.drop_path else None, model.xp, model.dtype).rows(rows)
    logits = run.net.forward(images[rows], draws=draws)
    step_loss, dlogits = run.loss(logits, targets[rows], cfg.label_smoothing)
    share = len(logits) / batch                       # 1 on one process
    model.zero_grad()
    if run.net is model:                              # the engine's ViT: dL/dx too
        model.backward(dlogits if share == 1 else dlogits * share)
    else:
        run.net.backward(dlogits if share == 1 else dlogits * share, need_dx=False)
    world.sum_gradients(model.flat_grads)             # the whole batch's gradient, on every rank
    sum_sq = optim.grad_norm_squared(model.parameters())   # for the NaN watch and clipping
    ok = run.guard.watch(run.step + 1, step_loss, sum_sq)
    if cfg.clip_grad:
        optim.clip_grad_norm(model.parameters(), cfg.clip_grad, sum_sq)
    run.opt.step(ok)
    if run.ema is not None:
        run.ema.update()
    run.step += 1
    return step_loss, logits, rows


def train_epoch(run, stop):
    """Train epoch run.epoch + 1 from the batch run.totals says, one train_step per batch.
    Every 10 steps the device is read (the NaN check, the progress bar); a stop request
    saves a mid-epoch checkpoint after the current step and raises KeyboardInterrupt."""
    cfg, world, xp = run.cfg, run.world, run.model.xp
    epoch, base = run.epoch + 1, run.totals           # base: the saved totals, over every rank
    steps = len(run.train_loader)
    run_loss = xp.zeros((), dtype=np.float64)         # this rank's totals, on the device
    run_correct = xp.zeros((), dtype=np.int64)
    seen = 0
    t0 = time.perf_counter() - base["seconds"]
    last_save = time.perf_counter()                   # for cfg.checkpoint_minutes

    def totals(i):
        """The epoch's totals over every rank after batch i (one collective)."""
        loss_sum, correct, images = world.sum([float(run_loss), int(run_correct), seen])
        return dict(batch=i, loss_sum=base["loss_sum"] + loss_sum, correct=base["correct"] + int(correct),
                    seen=base["seen"] + int(images), seconds=time.perf_counter() - t0)

    bar = _progress(steps, f"epoch {epoch}/{cfg.epochs}" if not cfg.time_budget else f"epoch {epoch}",
                    run.progress, base["batch"])
    i = base["batch"] - 1
    for i, (images, labels) in enumerate(run.train_loader.batches(epoch, base["batch"]), base["batch"]):
        step_start = time.perf_counter()
        elapsed = run.train_seconds + step_start - t0                # training time so far
        if cfg.time_budget:
            elapsed = world.share(elapsed)       # rank 0's clock: one schedule for every rank
            if elapsed >= cfg.time_budget:
                run.out_of_time = True
                i -= 1
                break
        loss, logits, rows = train_step(run, images, labels, epoch, i, elapsed)
        if not run.compiled:             # a GPU's first step compiled its kernels: wait for
            float(loss)                  # it once, and leave it off the clock
            spent = time.perf_counter() - step_start
            t0 += spent
            run.compiled = True
            run.log(f"First step: {spent:.1f} s (it compiled the GPU kernels), not counted as training time.")
        run_loss += loss * len(logits)
        run_correct += (logits.argmax(axis=1) == labels[rows]).sum()
        seen += len(logits)
        if run.on_step is not None:
            run.on_step(run.step)
        stopping = world.any(stop.signal is not None)
        if i % 10 == 9 or i == steps - 1 or stopping:
            run.guard.check(run.out / "checkpoint.npz", world)
            t = totals(i + 1)                        # every rank takes part in the sum
            _show_progress(bar, run, t, base)
            # a checkpoint inside the epoch: on request (Ctrl-C, SIGTERM) or on the clock
            due = cfg.checkpoint_minutes and time.perf_counter() - last_save >= 60 * cfg.checkpoint_minutes
            if (stopping or world.any(due)) and i + 1 < steps:
                run.totals = t                       # the epoch so far, saved for --resume
                save_checkpoint(run)
                last_save = time.perf_counter()
        if stopping and i + 1 < steps:
            if bar is not None:
                bar.close()
            run.log(f"{stop.reason()}: saved {run.out / 'checkpoint.npz'} at epoch {epoch}, batch "
                    f"{i + 1} of {steps}; continue with: minivit train --resume --out {run.out}")
            raise KeyboardInterrupt
    if bar is not None:
        bar.close()
    run.totals = totals(i + 1)


def end_of_epoch(run):
    """Validate (on the averaged weights, if any), keep best.npz, log the epoch's line,
    then save the checkpoint. Returns the metrics record."""
    t = run.totals
    run.epoch += 1
    run.train_seconds += t["seconds"]
    run.totals = new_epoch_totals()
    val_loss = val_acc = None
    is_best = False
    if len(run.val_loader.y):      # no validation split: nothing to choose best.npz by
        with run.ema.applied() if run.ema is not None else contextlib.nullcontext():
            val_loss, val_acc, _ = evaluate(run.net, run.val_loader, run.world)
            is_best = val_acc > run.best_val_acc
            run.best_val_acc = max(run.best_val_acc, val_acc)
            if is_best:            # best.npz holds the weights that were evaluated
                save_checkpoint(run, run.out / "best.npz", weights_only=True)
    seen = max(1, t["seen"])
    record = dict(epoch=run.epoch, step=run.step, lr=run.opt.lr, train_loss=t["loss_sum"] / seen,
                  train_acc=t["correct"] / seen, val_loss=val_loss, val_acc=val_acc,
                  epoch_seconds=round(t["seconds"], 3), train_seconds=round(run.train_seconds, 3),
                  images_per_second=round(t["seen"] / max(t["seconds"], 1e-9), 1))
    # metrics, best.npz, then checkpoint.npz: a run killed before the checkpoint redoes
    # this epoch on resume (dropping this line and rewriting best.npz alike)
    if run.world.main:
        write_jsonl(run.out / "metrics.jsonl", read_jsonl(run.out / "metrics.jsonl") + [record])
    save_checkpoint(run)
    val = f"val loss {val_loss:.4f} acc {val_acc:.4f}" if val_acc is not None else "no validation"
    run.log(f"epoch {run.epoch:3d}  train loss {record['train_loss']:.4f} acc {record['train_acc']:.4f}  "
            f"{val}  {t['seconds']:.1f}s  {'(best)' if is_best else ''}".rstrip())
    return record


# ------------------------------------------------------------ starting, saving, finishing

def check_run_folder(out, resume, world):
    """With resume, the checkpoint in out to continue (ckpt.load's triple); else None,
    once out is sure to take a new run: it holds no run and no other files."""
    last_path = out / "checkpoint.npz"
    if resume:
        if not last_path.exists():
            raise BadValue(f"--resume: no checkpoint at {last_path}; start a new run "
                               f"without --resume, or point --out at an earlier run folder")
        return ckpt.load_to_resume(last_path)      # damaged: names what is intact
    if last_path.exists():
        raise BadValue(f"{out} already holds a run (checkpoint.npz): pass --resume to "
                           f"continue it, or choose another --out")
    if world.main and out.is_dir() and any(out.iterdir()):    # (rank 0 writes there soon)
        held = sorted(p.name for p in out.iterdir())
        raise BadValue(f"{out} is not empty (it holds {', '.join(held[:4])}"
                           f"{', ...' if len(held) > 4 else ''}): a new run needs a new or "
                           f"empty folder, so that no two runs mix their files; choose another --out")
    return None


def training_loader(cfg, x, y, xp, mean, std):
    """The training images' Loader with the augmentation cfg asks for (shuffled, full
    batches but for a set smaller than one)."""
    return Loader(x, y, cfg.batch_size, xp, mean, std, shuffle=True, augment=cfg.augment,
                  seed=cfg.seed, dtype=cfg.dtype, drop_last=len(y) > cfg.batch_size,
                  randaugment=(cfg.randaugment, cfg.randaugment_magnitude),
                  alternate_flip=cfg.alternate_flip)


def start_run(cfg, data, out, world, saved=None, init_from=None, backend=None, log=print,
              progress=True, on_step=None):
    """Everything a run needs: the data, the model (new, from init_from's weights, or as
    saved), optimizer, loaders; the run folder is created only now -> Run."""
    d = prepare_data(cfg, data, log)
    mean, std = channel_stats(d["x_train"])
    world.use_local_gpu(get_xp(backend))          # each rank's own GPU, before any device array
    model = ViT(cfg.model_config(), backend=backend, seed=cfg.seed)
    if init_from is not None and saved is None:
        start_from(model, init_from, log)
    elif cfg.stem_init == "whiten" and saved is None:
        whiten_stem(model, d["x_train"], mean, std)
    if world.main:
        out.mkdir(parents=True, exist_ok=True)    # only now: a failed start leaves nothing
    threads = max(1, fast.cpu_threads() // world.local_size) if model.xp is np else None
    if world.local_size > 1 and threads is not None:
        fast.limit_blas_threads(threads)          # the ranks on this machine share its cores
    if cfg.engine == "fast":                      # the fast path must compute the engine's numbers
        problem = fast.check_against_engine(model, sides=sorted({side for _, side in resize_stages(cfg)}))
        if problem:
            raise BadValue(problem)
    xp = model.xp
    net, loss_fn = make_net(cfg, model, threads)
    train_loader = training_loader(cfg, d["x_train"], d["y_train"], xp, mean, std)
    run = Run(cfg=cfg, out=out, world=world, model=model, net=net, loss=loss_fn,
              opt=make_optimizer(cfg, model), ema=optim.EMA(model, cfg.ema) if cfg.ema else None,
              train_loader=train_loader,
              val_loader=Loader(d["x_val"], d["y_val"], cfg.eval_batch_size, xp, mean, std, dtype=cfg.dtype),
              guard=NonFiniteGuard(model, len(train_loader)),
              meta=dict(train=dataclasses.asdict(cfg), data_arg=None if data is None else str(data),
                        mean=mean.tolist(), std=std.tolist(), classes=list(CLASSES)),
              log=log, progress=progress, on_step=on_step, compiled=xp is np)
    if saved is not None:
        restore(run, *saved)
    if world.main:
        write_json(out / "config.json", dataclasses.asdict(cfg))
    length = (f"{cfg.time_budget:g} s of training" if cfg.time_budget else f"{cfg.epochs} epochs")
    ranks = f" on {world.size} processes" if world.size > 1 else ""
    engine = "the fast path (checked against the engine)" if cfg.engine == "fast" else "the engine"
    log(f"Model: {model.num_parameters():,} parameters on {model.backend}{ranks}, run by {engine}; "
        f"preset {cfg.preset}; {length}, {len(train_loader)} steps of batch {cfg.batch_size} an epoch.")
    if cfg.time_budget:                  # the figures of a budget carry the machine's speed
        run.meta["gemm_gflops"] = round(fast.gemm_gflops(xp), 1)
        log(f"Machine reference: float32 GEMM at {run.meta['gemm_gflops']:g} GFLOP/s on {model.backend}.")
    if cfg.time_budget and not run.compiled:
        log("Time budget: the clock starts after the first step, which compiles the GPU kernels "
            "(seconds to a minute, once: CuPy keeps them on disk).")
    stages = resize_stages(cfg)
    if len(stages) > 1:
        steps = [f"the first {stages[0][0]:.0%} of training on {stages[0][1]}x{stages[0][1]} images"]
        steps += [f"{side}x{side} to {end:.0%}" for end, side in stages[1:-1]]
        log(f"Progressive resizing: {', '.join(steps)}, then {cfg.img_size}x{cfg.img_size}.")
    return run


def start_from(model, path, log=print):
    """Load a checkpoint's weights into a new run's model (--init-from)."""
    weights, _, meta = ckpt.load(path)
    problem = ckpt.init_from_mismatch(path, meta["model"], dataclasses.asdict(model.config))
    if problem:
        raise BadValue(problem)
    model.load_state_dict(weights)
    log(f"Starting from the weights of {path} (epoch {meta.get('epoch')}).")


def restore(run, weights, optim_state, meta):
    """Put a checkpoint's weights, optimizer, average and position back into run."""
    run.model.load_state_dict(weights)
    run.opt.load_state_dict({**meta["optimizer"], **optim_state})
    if run.ema is not None:
        run.ema.load_state_dict({**meta["ema"], "shadow": optim_state["ema.shadow"]})
    run.epoch, run.step, run.best_val_acc = meta["epoch"], meta["step"], meta["best_val_acc"]
    run.train_seconds = meta.get("train_seconds", 0.0)
    run.totals = meta.get("in_epoch") or new_epoch_totals()
    # forget metrics of epochs after the checkpoint (from a run killed after writing them)
    if run.world.main:
        write_jsonl(run.out / "metrics.jsonl",
                    [m for m in read_jsonl(run.out / "metrics.jsonl", run.log) if m["epoch"] <= run.epoch])
    where = f"epoch {run.epoch + 1} batch {run.totals['batch']}" if run.totals["batch"] else f"epoch {run.epoch}"
    run.log(f"Resuming {run.out} after {where} (step {run.step}).")


def save_checkpoint(run, path=None, weights_only=False):
    """The one place a checkpoint is written: run's model and position (and, unless
    weights_only, the optimizer and the weight average, for resuming). Rank 0 writes."""
    if not run.world.main:
        return
    mid_epoch = run.totals["batch"] > 0
    meta = dict(run.meta, epoch=run.epoch, step=run.step, best_val_acc=run.best_val_acc,
                train_seconds=run.train_seconds, in_epoch=dict(run.totals) if mid_epoch else None)
    ckpt.save(path or run.out / "checkpoint.npz", run.model, meta,
              optimizer=None if weights_only else run.opt, ema=None if weights_only else run.ema)


def finish(out, backend=None, log=print, plots=True, data=None, world=None):
    """Score the run's model on the test set: best.npz (the best validation accuracy), or
    final.npz (the last weights) for a run with a time budget or no validation split;
    write summary.json, predictions.npz and plots. world: as train's."""
    out = Path(out)
    cfg = TrainConfig.from_dict(ckpt.load(out / "checkpoint.npz")[2]["train"])
    chosen = "final.npz" if cfg.time_budget or not cfg.val_fraction else "best.npz"
    world = world or distributed.world()
    r = score_checkpoint(out / chosen, data=data, backend=backend,
                         wrap=lambda model: make_net(cfg, model)[0], world=world)
    meta = r["meta"]
    if not world.main:
        return None
    summary = dict(test_acc=r["accuracy"], test_loss=r["loss"], test_images=int(len(r["preds"])),
                   model=chosen, epoch=meta["epoch"], train_seconds=meta.get("train_seconds"),
                   best_epoch=meta["epoch"] if chosen == "best.npz" else None,
                   best_val_acc=meta["best_val_acc"], data=r["source"],
                   per_class_acc=dict(zip(CLASSES, r["per_class"])), preset=meta["train"]["preset"],
                   parameters=r["model"].num_parameters(), backend=r["model"].backend,
                   images_per_second=_images_per_second(out), gemm_gflops=meta.get("gemm_gflops"))
    write_json(out / "summary.json", summary)
    atomic_write(out / "predictions.npz", lambda f: np.savez(
        f, y_true=r["y_test"], y_pred=r["preds"], images=r["x_test"][:32]))
    log(f"Test accuracy ({chosen}, epoch {meta['epoch']}): {r['accuracy']:.4f} on {len(r['preds'])} images")
    if plots:
        written = plot_run(out, log=log)
        if written:
            log("Plots: " + ", ".join(str(p) for p in written))
    log(f"Outputs in {out}/ (checkpoint.npz, best.npz, metrics.jsonl, summary.json)")
    return summary


def _images_per_second(out):
    """The training images per second of a run, over all its epochs."""
    metrics = read_jsonl(out / "metrics.jsonl")
    seconds = sum(m["epoch_seconds"] for m in metrics)
    return round(sum(m["images_per_second"] * m["epoch_seconds"] for m in metrics) / max(seconds, 1e-9), 1)


def _progress(total, desc, enabled, done=0):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=done, desc=desc, leave=False, dynamic_ncols=True)


def _show_progress(bar, run, t, base):
    """The progress bar at the epoch's totals t: loss, accuracy, images a second, and the
    time left of a budget."""
    if bar is None:
        return
    bar.update(t["batch"] - bar.n)
    left = {}
    if run.cfg.time_budget:
        seconds = max(0, int(run.cfg.time_budget - run.train_seconds - t["seconds"]))
        left = dict(left=f"{seconds // 60}:{seconds % 60:02d}")
    bar.set_postfix(loss=f"{t['loss_sum'] / t['seen']:.3f}", acc=f"{t['correct'] / t['seen']:.3f}",
                    img_s=f"{(t['seen'] - base['seen']) / max(1e-9, t['seconds'] - base['seconds']):.0f}",
                    **left)
