"""The first sanity check of any hand-written network: can it memorize one small batch?

If every backward pass is right, a ViT driven by Adam drives the loss on 32 fixed images
towards zero and their accuracy to 100% within a few hundred steps. A sign error or a
missing term anywhere in the backward shows up here as a loss that stalls.

    python examples/overfit_one_batch.py
    python examples/overfit_one_batch.py --steps 300 --backend cupy
"""

import argparse

import numpy as np

import minivit
from minivit import data

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--steps", type=int, default=150)
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--backend", default="numpy", choices=["numpy", "cupy", "auto"])
args = ap.parse_args()

d = data.load_cifar10(data.SAMPLE_FOLDER)                         # the shipped sample
mean, std = data.channel_stats(d["x_train"])
model = minivit.ViT(embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0, backend=args.backend)
images = data.normalize(model.xp.asarray(d["x_train"][:args.batch]), mean, std)  # [B, 3, 32, 32]
labels = model.xp.asarray(d["y_train"][:args.batch])
optimizer = minivit.Adam(model.parameters(), lr=1e-3)

for step in range(1, args.steps + 1):
    logits = model.forward(images)
    loss, dlogits = minivit.cross_entropy(logits, labels)
    model.zero_grad()
    model.backward(dlogits)
    optimizer.step()
    if step % 25 == 0 or step == 1:
        acc = float((logits.argmax(axis=1) == labels).mean())
        print(f"step {step:4d}  loss {float(loss):.4f}  batch accuracy {acc:.3f}")

final_loss, _ = minivit.cross_entropy(model.forward(images), labels)
print(f"final loss {float(final_loss):.4f} (started near ln 10 = {np.log(10):.3f})")
