"""Training on CIFAR-10: the training loop and its run folder.

    from minivit.config import TrainConfig
    from minivit.train import train
    summary = train(TrainConfig.from_preset("sample", epochs=3), out="runs/try")

The loop, as it reads below: train() opens the run folder and builds a Run (start_run,
in run.py),
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
import time
from pathlib import Path

import numpy as np

from . import augment, distributed, fast, seeds
from . import checkpoint as ckpt
from .config import TrainConfig
from .course import yours
from .data import CLASSES
from .engine import optim, resize
from .engine.draws import StepDraws
from .errors import BadValue
from .evaluate import evaluate, score_checkpoint
from .files import atomic_write, read_jsonl, write_json, write_jsonl
from .guards import StopRequest
from .plots import plot_run
from .run import make_net, new_epoch_totals, save_checkpoint, start_run
from .schedule import image_size_at, lr_at


def train(cfg, data=None, out="runs/run", *, resume=False, init_from=None, backend=None,
          progress=True, plots=True, log=print, stop_after_epochs=None, on_step=None,
          on_epoch=None, world=None, clock=time.perf_counter, student=None):
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
    clock: () -> seconds, what time budgets and checkpoint intervals are measured by.
    student: a student's functions by exercise name (a notebook's globals()) to
        train the engine on, as cfg.layers does with a file (cfg.engine "reference").
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
    if student is not None and cfg.engine != "reference":
        raise BadValue(f"train(student=...) runs your functions in the engine itself, but the "
                       f"configuration's engine is {cfg.engine!r}: pass engine='reference' "
                       f"(TrainConfig.from_preset(..., engine='reference'))")
    with yours.for_training(cfg.layers, namespace=student, log=log):
        fast.tune_host_allocator()
        run = start_run(cfg, data, out, world, saved=saved, init_from=init_from, backend=backend,
                        log=log, progress=progress, on_step=on_step, clock=clock)

        last_epoch = 10 ** 9 if cfg.time_budget else cfg.epochs     # a budget ends on the clock
        end_epoch = last_epoch if stop_after_epochs is None else min(last_epoch, run.epoch + stop_after_epochs)
        if saved is not None and (run.epoch >= last_epoch or run.out_of_time):
            done = "its time budget spent" if cfg.time_budget else f"epoch {run.epoch} of {cfg.epochs}"
            log(f"The run had already finished ({done}): nothing left to train; it is scored "
                f"again. To train it further, start a new run from it: minivit train --init-from "
                f"{out / 'final.npz'}")
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
    t0 = run.clock() - base["seconds"]
    last_save = run.clock()                   # for cfg.checkpoint_minutes

    def totals(i):
        """The epoch's totals over every rank after batch i (one collective)."""
        loss_sum, correct, images = world.sum([float(run_loss), int(run_correct), seen])
        return dict(batch=i, loss_sum=base["loss_sum"] + loss_sum, correct=base["correct"] + int(correct),
                    seen=base["seen"] + int(images), seconds=run.clock() - t0)

    bar = _progress(steps, f"epoch {epoch}/{cfg.epochs}" if not cfg.time_budget else f"epoch {epoch}",
                    run.progress, base["batch"])
    i = base["batch"] - 1
    for i, (images, labels) in enumerate(run.train_loader.batches(epoch, base["batch"]), base["batch"]):
        step_start = run.clock()
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
            spent = run.clock() - step_start
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
            due = cfg.checkpoint_minutes and run.clock() - last_save >= 60 * cfg.checkpoint_minutes
            if (stopping or world.any(due)) and i + 1 < steps:
                run.totals = t                       # the epoch so far, saved for --resume
                save_checkpoint(run)
                last_save = run.clock()
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


# ------------------------------------------------------------ the run folder, the end

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
    files = [f for f in ("config.json", "metrics.jsonl", "checkpoint.npz", "best.npz", "final.npz",
                         "summary.json", "predictions.npz") if (out / f).exists()]
    log(f"Outputs in {out}/ ({', '.join(files)})")
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
