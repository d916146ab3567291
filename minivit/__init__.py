"""minivit: a Vision Transformer with hand-derived backward passes, on NumPy or CuPy.

    import minivit
    model = minivit.ViT(backend="numpy")             # or "cupy", "auto"
    logits = model.forward(images)                   # [B, 3, 32, 32] -> [B, 10]
    loss, dlogits = minivit.cross_entropy(logits, labels)
    model.backward(dlogits)                          # fills model.grads()
"""

from . import backend, checkpoint, data, gradcheck, layers
from .backend import get_xp, gpu_available, to_device, to_host
from .loss import cross_entropy
from .config import TrainConfig, ViTConfig
from .errors import MinivitError
from .model import ViT, Param
from .optim import EMA, Adam, AdamW, Muon, clip_grad_norm
from .schedule import warmup_cosine

__version__ = "0.1.0"

__all__ = ["ViT", "ViTConfig", "TrainConfig", "Param", "MinivitError", "cross_entropy", "Adam", "AdamW", "Muon", "EMA", "clip_grad_norm", "warmup_cosine",
           "gradcheck", "layers", "backend", "checkpoint", "data", "get_xp", "gpu_available", "to_host", "to_device"]
