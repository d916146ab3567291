"""minivit: a Vision Transformer with hand-derived backward passes, on NumPy or CuPy.

    import minivit
    model = minivit.ViT(backend="numpy")             # or "cupy", "auto"
    logits = model.forward(images)                   # [B, 3, 32, 32] -> [B, 10]
    loss, dlogits = minivit.cross_entropy(logits, labels)
    model.backward(dlogits)                          # fills model.grads()

Three rooms: minivit/engine/ (the layers, the model, the loss, the optimizers, gradient
checks: what a student reads), minivit/fast/ (the same numbers in fewer operations,
checked against the engine) and, around them, the machinery in minivit/ itself (data,
training, checkpoints, evaluation, plots, the command line). Importing minivit loads
nothing until a name is used.
"""

import importlib

__version__ = "0.2.0"

# name -> the module that defines it, imported on first use
_NAMES = {
    "ViT": "engine.model", "Param": "engine.model", "ViTConfig": "engine.config",
    "StepDraws": "engine.draws", "cross_entropy": "engine.loss",
    "Adam": "engine.optim", "AdamW": "engine.optim", "Muon": "engine.optim",
    "EMA": "engine.optim", "clip_grad_norm": "engine.optim",
    "get_xp": "engine.backend", "gpu_available": "engine.backend",
    "to_host": "engine.backend", "to_device": "engine.backend",
    "MinivitError": "engine.errors", "TrainConfig": "config", "warmup_cosine": "schedule",
}
_MODULES = {"engine", "fast", "checkpoint", "data", "train"}

__all__ = sorted(_NAMES) + sorted(_MODULES)


def __getattr__(name):
    if name in _NAMES:
        return getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'minivit' has no attribute {name!r}")
