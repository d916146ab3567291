"""A training run's parts and how they are put together: the Run (the model, what runs
it, the optimizer, the loaders, the position in training), built by start_run, put back
from a checkpoint by restore and saved by save_checkpoint. The loop that drives it is in
train.py.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import checkpoint as ckpt
from . import distributed, fast
from .config import TrainConfig
from .data import CLASSES, Loader, channel_stats, data_or_sample, load_cifar10, split_validation
from .engine import loss, optim
from .engine.backend import get_xp
from .engine.model import ViT
from .errors import BadValue
from .files import read_jsonl, write_json, write_jsonl
from .guards import NonFiniteGuard
from .schedule import resize_stages
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


def make_optimizer(cfg, model, stacked=None):
    """cfg's optimizer for model's parameters (Muon: the fast path's, whose stacks share
    the CPU's threads, unless cfg trains the engine itself). stacked: the fast Muon's one
    padded stack of every matrix (default: on the GPU only; fast.Muon)."""
    if cfg.optimizer == "adam":
        return optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    groups = decay_groups(model, cfg.weight_decay)
    if cfg.optimizer == "muon":      # the blocks' matrices and the patch embedding by Muon
        matrices = [p for p in groups[0]["params"] if p.name.startswith(MUON_PREFIXES)]
        groups[0]["params"] = [p for p in groups[0]["params"] if p not in matrices]
        if cfg.engine == "reference":
            return optim.Muon(matrices, groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        return fast.Muon(matrices, groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                         stacked=stacked)
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
    """A training run: what trains, where it writes, and where it stands (epoch, step,
    best_val_acc, train_seconds and totals: its position, saved in every checkpoint by
    save_checkpoint, put back by restore)."""
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
    clock: Callable = time.perf_counter  # seconds; tests pass a clock of their own


def training_loader(cfg, x, y, xp, mean, std):
    """The training images' Loader with the augmentation cfg asks for (shuffled, full
    batches but for a set smaller than one)."""
    return Loader(x, y, cfg.batch_size, xp, mean, std, shuffle=True, augment=cfg.augment,
                  seed=cfg.seed, dtype=cfg.dtype, drop_last=len(y) > cfg.batch_size,
                  randaugment=(cfg.randaugment, cfg.randaugment_magnitude),
                  alternate_flip=cfg.alternate_flip)


def start_run(cfg, data, out, world, saved=None, init_from=None, backend=None, log=print,
              progress=True, on_step=None, clock=time.perf_counter):
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
    if cfg.engine == "fast" and model.xp is np:   # its products on the faster BLAS here
        log(fast.blas.choose(model, cfg.batch_size // world.size or 1, threads,
                             previous=saved[2].get("blas") if saved is not None else None))
    if cfg.engine == "fast":                      # the fast path must compute the engine's numbers
        sides = [side for _, side in resize_stages(cfg)]         # progressive resizing's
        problem = fast.check_against_engine(model, sides=sorted({min(sides), max(sides)}))
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
                        mean=mean.tolist(), std=std.tolist(), classes=list(CLASSES),
                        blas=fast.blas.current() if cfg.engine == "fast" and xp is np else None),
              log=log, progress=progress, on_step=on_step, compiled=xp is np, clock=clock)
    if saved is not None:
        restore(run, *saved)
    if world.main:
        write_json(out / "config.json", dataclasses.asdict(cfg))
    length = f"{cfg.time_budget:g} s of training" if cfg.time_budget else counted(cfg.epochs, "epoch")
    ranks = f" on {world.size} processes" if world.size > 1 else ""
    engine = "the fast path (checked against the engine)" if cfg.engine == "fast" else "the engine"
    log(f"Model: {model.num_parameters():,} parameters on {model.backend}{ranks}, run by {engine}; "
        f"preset {cfg.preset}; {length}, {counted(len(train_loader), 'step')} of batch {cfg.batch_size} an epoch.")
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


def counted(n, word):
    """'1 step', '2 steps'."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def start_from(model, path, log=print):
    """Load a checkpoint's weights into a new run's model (--init-from)."""
    weights, _, meta = ckpt.load(path, "--init-from")
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
    run.out_of_time = bool(run.cfg.time_budget) and run.train_seconds >= run.cfg.time_budget
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
