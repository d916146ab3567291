"""Write torch_simplevit.npz: what PyTorch's SimpleViT computes, in float64, for minivit's
tests to compare against without PyTorch (as llm.c checks its C against a file of
PyTorch's numbers).

    pip install torch && python tests/reference/make_torch_reference.py

The model is benchmarks/torch_simplevit.py, tiny (8x8 images, 4x4 patches, width 12, 2
blocks of 3 heads, 5 classes), so the file stays a few tens of kB. Its parameters are
drawn here with NumPy (not torch's initializers): large enough that every gradient is far
from zero. The file holds the inputs, labels, parameters, logits, the loss with label
smoothing 0.1, the gradient of every parameter and of the input, and the parameters after
one and after three steps of torch.optim.Adam and of torch.optim.AdamW (the same gradient
at each step). tests/engine/test_torch_reference.py and tests/fast/test_runner.py read it.
"""

import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "benchmarks"))
from torch_simplevit import SimpleViT  # noqa: E402

CONFIG = dict(img_size=8, patch_size=4, in_chans=3, embed_dim=12, depth=2, num_heads=3,
              mlp_ratio=2.0, num_classes=5)
BATCH, SMOOTHING = 4, 0.1
ADAM = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
ADAMW = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
STEPS = (1, 3)


def draw_params(model, rng):
    """{name: float64 array}: weights ~ N(0, 1/fan_in), biases ~ N(0, 0.1^2), LayerNorm
    weights ~ 1 + N(0, 0.1^2), class token and position embedding ~ N(0, 0.5^2)."""
    params = {}
    for name, t in model.state_dict().items():
        shape = tuple(t.shape)
        if name.endswith("bias"):
            a = 0.1 * rng.standard_normal(shape)
        elif "norm" in name:
            a = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name.startswith("vit_embed."):
            a = 0.5 * rng.standard_normal(shape)
        else:
            a = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
        params[name] = a
    return params


def optimizer_steps(cls, hyper, params, grads):
    """{f"{steps}/{name}": array}: the parameters after each count in STEPS of cls steps."""
    tensors = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in params.items()}
    opt = cls(list(tensors.values()), foreach=False, **hyper)
    out = {}
    for step in range(1, max(STEPS) + 1):
        for k, t in tensors.items():
            t.grad = torch.from_numpy(grads[k].copy())
        opt.step()
        if step in STEPS:
            out.update({f"{step}/{k}": t.detach().numpy().copy() for k, t in tensors.items()})
    return out


def main():
    torch.manual_seed(0)
    model = SimpleViT(**CONFIG).double()
    rng = np.random.default_rng(20)
    params = draw_params(model, rng)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
    x = rng.standard_normal((BATCH, CONFIG["in_chans"], CONFIG["img_size"], CONFIG["img_size"]))
    labels = rng.integers(0, CONFIG["num_classes"], BATCH)
    tx = torch.tensor(x, requires_grad=True)
    logits = model(tx)
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels), label_smoothing=SMOOTHING)
    loss.backward()
    grads = {k: p.grad.numpy().copy() for k, p in model.named_parameters()}
    arrays = {"x": x, "labels": labels, "logits": logits.detach().numpy(), "loss": np.array(loss.item()),
              "grad/input": tx.grad.numpy()}
    arrays.update({f"param/{k}": v for k, v in params.items()})
    arrays.update({f"grad/{k}": v for k, v in grads.items()})
    arrays.update({f"adam/{k}": v for k, v in optimizer_steps(torch.optim.Adam, ADAM, params, grads).items()})
    arrays.update({f"adamw/{k}": v for k, v in optimizer_steps(torch.optim.AdamW, ADAMW, params, grads).items()})
    meta = dict(config=CONFIG, label_smoothing=SMOOTHING, adam=ADAM, adamw=ADAMW, steps=STEPS,
                torch=torch.__version__, numpy=np.__version__)
    arrays["meta"] = np.array(json.dumps(meta))
    path = os.path.join(HERE, "torch_simplevit.npz")
    np.savez_compressed(path, **arrays)
    print(f"wrote {path} ({os.path.getsize(path):,} bytes, {len(arrays)} arrays; torch {torch.__version__})")


if __name__ == "__main__":
    main()
