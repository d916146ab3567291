"""The reference experiment, top to bottom: the SimpleViT on CIFAR-10 with Adam 3e-4,
batch 80, no augmentation, evaluated every epoch (the `seed` preset, written out by hand
with the library's pieces).

    python examples/train_cifar10.py                       # full CIFAR-10 if found, else the sample
    python examples/train_cifar10.py --data ~/cifar10 --backend cupy --epochs 30
    python examples/train_cifar10.py --epochs 2 --limit 1000 --embed-dim 48 --depth 2  # a quick look
"""

import argparse
import time

import minivit
from minivit import data

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--data", default=None, help="folder holding cifar-10-batches-py")
ap.add_argument("--backend", default="auto", choices=["numpy", "cupy", "auto"])
ap.add_argument("--epochs", type=int, default=30)
ap.add_argument("--limit", type=int, default=0, help="use only the first N training images")
ap.add_argument("--embed-dim", type=int, default=192)
ap.add_argument("--depth", type=int, default=6)
args = ap.parse_args()

# 1. Data: the official pickles -> uint8 arrays; 10% of the training set held out for validation.
folder, _ = data.data_or_sample(args.data, log=print)
d = data.load_cifar10(folder)
x, y = d["x_train"], d["y_train"]
if args.limit:
    x, y = x[:args.limit], y[:args.limit]
x_train, y_train, x_val, y_val = data.split_validation(x, y, 0.1)
mean, std = data.channel_stats(x_train)
print(f"data: {folder}: {len(y_train)} train, {len(y_val)} validation, {len(d['y_test'])} test")

# 2. The model and the optimizer of the reference post.
model = minivit.ViT(img_size=32, patch_size=4, embed_dim=args.embed_dim, depth=args.depth,
                    num_heads=3, mlp_ratio=4.0, num_classes=10, backend=args.backend)
optimizer = minivit.Adam(model.parameters(), lr=3e-4)
print(model)

# 3. Batches live on the backend (GPU memory under CuPy); reshuffled (seeded) every epoch.
train_batches = data.Loader(x_train, y_train, 80, model.xp, mean, std, shuffle=True, seed=0)
val_batches = data.Loader(x_val, y_val, 500, model.xp, mean, std)
test_batches = data.Loader(d["x_test"], d["y_test"], 500, model.xp, mean, std)


def accuracy(batches):
    correct = 0
    for images, labels in batches:
        correct += int((model.forward(images).argmax(axis=1) == labels).sum())
    return correct / len(batches.y)


# 4. The training loop: forward, loss, backward, step.
for epoch in range(1, args.epochs + 1):
    t0, total_loss = time.perf_counter(), 0.0
    for images, labels in train_batches:
        logits = model.forward(images)                      # [80, 10]
        loss, dlogits = minivit.cross_entropy(logits, labels)
        model.zero_grad()
        model.backward(dlogits)                             # gradients of every parameter
        optimizer.step()
        total_loss += float(loss)
    print(f"epoch {epoch:2d}  loss {total_loss / len(train_batches):.4f}  "
          f"val acc {accuracy(val_batches):.4f}  ({time.perf_counter() - t0:.1f}s)")

print(f"test accuracy {accuracy(test_batches):.4f}")
