"""Where does a trained ViT look? Per-head attention of what its head reads (the class
token, or the pooled patch tokens) and attention rollout, drawn over a few test images.

    python examples/attention_maps.py --checkpoint runs/.../best.npz [--data DIR] [--count 4]

Writes attention-<i>.png per image (the same figure as `minivit attention`).
"""

import argparse

import minivit
from minivit import attention_maps, checkpoint, data

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--checkpoint", required=True)
ap.add_argument("--data", default=None)
ap.add_argument("--count", type=int, default=4)
ap.add_argument("--layer", type=int, default=-1)
args = ap.parse_args()

model, meta = checkpoint.load_model(args.checkpoint)
folder, _ = data.data_or_sample(args.data, need="test", log=print)
x_test, y_test = data.load_test(folder)
images = x_test[:args.count]                                   # uint8 [n, 3, 32, 32]
x = data.normalize(model.xp.asarray(images), meta["mean"], meta["std"])
logits, maps, readout = model.attention(x)                     # maps[l]: [n, heads, N, N]
print(f"{len(maps)} blocks, attention maps of shape {tuple(maps[0].shape)}")
heads = attention_maps.to_grid(attention_maps.reader_attention(maps[args.layer], readout))  # [n, heads, g, g]
roll = attention_maps.to_grid(attention_maps.rollout(maps, readout))                       # [n, g, g]
pooled = None if readout is None else attention_maps.to_grid(readout)                      # [n, g, g]
pred = minivit.to_host(logits).argmax(axis=1)
for i in range(len(images)):
    title = f"predicted {data.CLASSES[pred[i]]} (true {data.CLASSES[y_test[i]]})"
    path = attention_maps.draw(images[i], heads[i], roll[i], f"attention-{i}.png", title,
                               None if pooled is None else pooled[i])
    print(f"{path}: {title}")
