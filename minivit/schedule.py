"""Schedules, all in one place: the learning rate of every training step, and the image
size of progressive resizing.

    lr_at(cfg, step, steps_per_epoch, elapsed)          # what training uses
    image_size_at(cfg, step, steps_per_epoch, elapsed)         # resize_stages(cfg): all of them
    warmup_cosine(step, total_steps, base_lr, warmup_steps, min_lr)

By epochs, warmup lasts warmup_epochs and the decay (cosine, linear, or none) reaches
min_lr at the last step. With a time budget the clock replaces the step count: warmup
takes warmup_fraction of the budget and the decay ends when the budget is spent.
"""

import math


def warmup_cosine(step, total_steps, base_lr, warmup_steps=0, min_lr=0.0):
    """The learning rate for step (0-based): linear warmup from base_lr/warmup_steps to
    base_lr over warmup_steps steps, then a half cosine from base_lr down to min_lr at
    total_steps (and min_lr after)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def lr_at(cfg, step, steps_per_epoch, elapsed=0.0):
    """The learning rate of a step (0-based) of a run with TrainConfig cfg: by steps
    (warmup_epochs, then decay over epochs), or, with a time budget, by the training time
    elapsed (warmup_fraction of the budget, then decay until the budget is spent)."""
    if cfg.time_budget:
        progress, warmup = min(1.0, elapsed / cfg.time_budget), cfg.warmup_fraction
        if progress < warmup:
            return cfg.lr * max(progress / warmup, 1e-3)
        if cfg.schedule == "constant":
            return cfg.lr
        done = (progress - warmup) / (1.0 - warmup)
        shape = 1.0 - done if cfg.schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * done))
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * shape
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    if cfg.schedule == "constant":
        return cfg.lr * min(1.0, (step + 1) / warmup) if warmup else cfg.lr
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "linear":
        if step < warmup:
            return cfg.lr * (step + 1) / warmup
        done = min(1.0, (step - warmup) / max(1, total - warmup))
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * (1.0 - done)
    return warmup_cosine(step, total, cfg.lr, warmup, cfg.min_lr)


def resize_stages(cfg):
    """Progressive resizing as [(share of training at which a stage ends, its image side)]:
    low_res_size for the first low_res share, then mid_res_size for the next mid_res share
    (each stage only when its share is not 0), then img_size to the end (share 1)."""
    stages, end = [], 0.0
    for share, side in ((cfg.low_res, cfg.low_res_size), (cfg.mid_res, cfg.mid_res_size)):
        if share:
            end += share
            stages.append((end, side))
    return stages + [(1.0, cfg.img_size)]


def image_size_at(cfg, step, steps_per_epoch, elapsed=0.0):
    """Progressive resizing: the image side of a step, from resize_stages: where the step
    lies in training (the share of the time budget spent, or of all steps)."""
    done = elapsed / cfg.time_budget if cfg.time_budget else step / (cfg.epochs * steps_per_epoch)
    return next(side for end, side in resize_stages(cfg) if done < end or end == 1.0)
