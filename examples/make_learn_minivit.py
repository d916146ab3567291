"""Write examples/learn_minivit.ipynb, the notebook a learner runs top to bottom, from the
cells below (the notebook is generated, never edited by hand; commit both, without
outputs). tests/machinery/test_notebook.py runs it and checks it matches this script.

    pip install -e .[notebook] && python examples/make_learn_minivit.py
    jupyter lab examples/learn_minivit.ipynb            # or VS Code
"""

import ast
import inspect
import os
import sys

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "learn_minivit.ipynb")

# what ties an exercise to this notebook's sections (the rest of its text is the course's own)
NOTES = {
    "patch_embed_backward": "Section 1 above cut the image into patches: the conv is your "
                            "`linear_backward` on them.",
    "layernorm_backward": "Section 2 above derived it step by step; now write it for a whole batch "
                          "of rows. The check's upstream gradient is random, never all ones: an "
                          "all-ones `dy` would hide the path through the mean.",
    "sdpa_backward": "Section 3 above did this with the matrix-product rule. Forget the scale and "
                     "the check says `dq` and `dk` are *off by a constant factor: 2 = sqrt(d)*: its "
                     "case has head width `d = 4`, and `s = q k^T / sqrt(d)` puts a `1/sqrt(d)` on "
                     "`ds`, so without it `dq` and `dk` come out `sqrt(d) = 2` times too large; `dv` "
                     "does not pass through `s` and stays right.",
    "block_backward": "Section 4 above checked the whole model: this is the piece it repeats.",
}


def stub_sources():
    """(the stubs' import lines, {exercise: its stub's source}) from minivit/course/stubs.py,
    the same stubs `minivit exercises new` writes."""
    from minivit.course import stubs
    source = inspect.getsource(stubs)
    tree = ast.parse(source)
    lines = source.splitlines()
    imports = "\n".join(ast.get_source_segment(source, n) for n in tree.body
                        if isinstance(n, (ast.Import, ast.ImportFrom)))
    functions = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            functions[node.name] = "\n".join(lines[first - 1:node.end_lineno])
    return imports, functions


def exercise_cells():
    """Section 5 (each exercise: what it is, its stub to fill in, its check) and section 6
    (training on the student's functions)."""
    from minivit.course.exercises import EXERCISES
    imports, functions = stub_sources()
    core = [e for e in EXERCISES if not e.extra]
    cells = [("md", f"""## 5. Exercises: every backward pass, written by you

{len(core)} exercises, in the order of [docs/gradients.md](../docs/gradients.md), each one a
function of the engine: the same name, the same arguments, the forward's cache read by the
same names, so yours can take the engine's place (section 6). In each exercise, replace
`raise NotImplementedError` in the first cell with your code and run the second: it checks
every gradient your function returns against finite differences and against the engine, and
says **right**, **wrong** (which gradient, with a hint from the error's pattern: a constant
factor, a sign, a transposition, a missing mean, a shape, a dtype, ...) or **not done**.
Each exercise is checked on its own: the others it calls are the engine's while it is
checked. `minivit exercises new my_backward.py` writes the same stubs to a file, for your
editor, and `minivit exercises check my_backward.py` grades it."""),
             ("code", "from minivit.course.yours import verdict\n" + imports)]
    for i, e in enumerate(core, 1):
        note = f" {NOTES[e.name]}" if e.name in NOTES else ""
        cells.append(("md", f"**Exercise {i}: `{e.name}`**: {e.teaches}. Derived in "
                            f"[docs/gradients.md](../docs/gradients.md), section {e.section}.{note}"))
        cells.append(("code", functions[e.name]))
        cells.append(("code", f"verdict({e.name})"))
    cells += [("md", """## 6. A ViT trained on your gradients

Once your functions are right, the engine can run on them: the cell below trains the
`sample` preset's ViT (4 blocks, 142k parameters) on the sample shipped with minivit, with
every function of yours that is right in the engine's place (and the engine's for any not
done yet): 15 epochs, about five minutes on a 2-core CPU (15-25 s an epoch; fewer
`epochs` for a quicker look). A wrong function stops it before the first step, with the
check's verdict. From a shell, with your file: `minivit train --layers my_backward.py`."""),
              ("code", """import time
from minivit.config import TrainConfig
from minivit.train import train

cfg = TrainConfig.from_preset("sample", engine="reference", epochs=15)
out = f"runs/your-gradients-{time.strftime('%Y%m%d-%H%M%S')}"
try:
    summary = train(cfg, out=out, student=globals(), progress=False)
    print(f"Your ViT, on your gradients: {summary['test_acc']:.1%} on {summary['test_images']} test images")
except ValueError as e:                          # a wrong function, or none done yet: it says which
    print(e)""")]
    return cells

CELLS = [
    ("md", """# Learning minivit: a Vision Transformer's gradients, by hand

Run this notebook top to bottom (a minute on a laptop CPU); it runs as shipped, and your
exercises say "not done" until you write them. On the way you will

1. cut an image into patches and embed them, on numbers small enough to follow by eye,
   and see the conv stem's im2col;
2. derive LayerNorm's backward pass step by step and check each step;
3. derive attention's backward pass with the matrix-product rule;
4. check the whole model against finite differences;
5. **write every backward pass of the ViT yourself**, each checked against finite
   differences and the engine, with a hint when it is wrong;
6. train a ViT on your own gradients;
7. look at what the model shipped with minivit predicts, and where it looks.

Everything here is minivit's engine, the code a student reads: `minivit.engine.layers`
(patches, convs, LayerNorm, softmax, GELU), `minivit.engine.transformer` (attention, the
MLP, the block, the head) and `minivit.engine.gradcheck` (the finite-difference checks).
The notation is that of [docs/gradients.md](../docs/gradients.md) (its notation table):
`B` batch, `C` channels, `H` = `W` image side, `p` patch side, `P` patches, `N = P + 1`
tokens, `D` width, `h` heads, `d = D / h` head width; for an array `y`, `dy` is dL/dy."""),
    ("code", """%matplotlib inline
import numpy as np
import matplotlib.pyplot as plt

import minivit
from minivit import attention_maps, checkpoint, data
from minivit.engine import gradcheck, layers, transformer

np.set_printoptions(precision=3, suppress=True, linewidth=110)
rng = np.random.default_rng(0)"""),
    ("md", """## 1. Patches and the patch embedding

A 1-channel 4x4 "image" whose pixels are their own index, cut into 2x2 patches. Each patch
is flattened row by row (channel, row, column: the order of a conv kernel)."""),
    ("code", """x = np.arange(16.0).reshape(1, 1, 4, 4)          # [B, C, H, W] = [1, 1, 4, 4]
print(x[0, 0])
patches = layers.patchify(x, 2)                   # [B, P, C*p*p] = [1, 4, 4]
print(patches[0])
assert patches[0, 1].tolist() == [2, 3, 6, 7]     # patch 1 is the top right one"""),
    ("md", """A convolution with kernel = stride = `p` sees every patch once, and the patches do not
overlap, so it *is* a linear layer on the flattened patches: `y = patches W^T + b` with
`W = w.reshape(D, C*p*p)`. Two output channels (`D = 2`): the first kernel sums its patch,
the second picks the top-left pixel and adds a bias of 100."""),
    ("code", """w = np.zeros((2, 1, 2, 2))                         # [D, C, p, p]
w[0] = 1.0
w[1, 0, 0, 0] = 1.0
b = np.array([0.0, 100.0])
tokens, cache = layers.patch_embed_forward(x, w, b)  # [B, P, D]
print(tokens[0])

# the same numbers by the definition of a convolution with kernel 2 and stride 2
by_hand = [[(x[0, 0, 2 * i:2 * i + 2, 2 * j:2 * j + 2] * w[c, 0]).sum() + b[c] for c in range(2)]
           for i in range(2) for j in range(2)]
assert np.allclose(tokens[0], by_hand)"""),
    ("md", """Backward: the linear layer's backward gives the patches' gradient, and `unpatchify` puts
each patch's gradient back where the patch came from (each pixel is in exactly one patch,
so nothing is summed). Every backward in minivit is checked the same way: the gradient of
`L = sum(out * G)` for a random `G` against centered finite differences (docs/gradients.md,
section 0 says why the step is 3e-6 and the pass mark 1e-7)."""),
    ("code", """dtokens = np.array([[[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 10.0]]])   # [B, P, D]
dx, dw, db = layers.patch_embed_backward(dtokens, cache)
print(dx[0, 0])     # patch 0 gets kernel 0 (all ones); patch 3 gets 10 x kernel 1 (its top-left pixel)

report = gradcheck.check(layers.patch_embed_forward, layers.patch_embed_backward,
                         {"x": rng.standard_normal((2, 3, 8, 8)), "w": 0.2 * rng.standard_normal((6, 3, 4, 4)),
                          "b": rng.standard_normal(6)})
print(report)
assert report.passed"""),
    ("md", """A real CIFAR-10 image (from the sample shipped with minivit) and its 8 x 8 grid of 4 x 4
patches: the 64 tokens the transformer sees."""),
    ("code", """x_test, y_test = data.load_test(data.SAMPLE_FOLDER)     # uint8 [500, 3, 32, 32], int [500]
image = x_test[3].transpose(1, 2, 0)                     # [H, W, C] for matplotlib
p = 4
fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
axes[0].imshow(image)
for t in range(0, 33, p):
    axes[0].axhline(t - 0.5, color="w", lw=0.8)
    axes[0].axvline(t - 0.5, color="w", lw=0.8)
axes[0].set_title(f"{data.CLASSES[y_test[3]]}: {(32 // p) ** 2} patches of {p} x {p}")
mosaic = np.ones((8 * (p + 1), 8 * (p + 1), 3), dtype=np.uint8) * 255
for n, patch in enumerate(layers.patchify(x_test[3:4].astype(float), p)[0]):   # [P, C*p*p]
    i, j = divmod(n, 8)
    mosaic[i * (p + 1):i * (p + 1) + p, j * (p + 1):j * (p + 1) + p] = patch.reshape(3, p, p).transpose(1, 2, 0)
axes[1].imshow(mosaic)
axes[1].set_title("the patches, token 1 to 64, row by row")
for ax in axes:
    ax.axis("off")
plt.show()"""),
    ("md", """### The conv stem: im2col

The `hybrid` preset puts a 3x3 convolution with padding 1 before the patch embedding. Its
windows overlap, so it is not a reshape, but after one gather (im2col) it is again a
linear layer: one row of `cols` per output pixel, holding the 3x3 window under it. Here a
5x5 image, stride 2: 3x3 output pixels, so 9 rows of 9 values."""),
    ("code", """x = np.arange(1.0, 26.0).reshape(1, 1, 5, 5)
w = np.ones((1, 1, 3, 3))                                # sums each window
y, cache = layers.conv2d_forward(x, w, np.zeros(1), stride=2, padding=1)   # [1, 1, 3, 3]
cols = cache.linear.x2                                   # [Ho * Wo, C*k*k] = [9, 9]
print(y[0, 0])
assert np.allclose(y.reshape(-1), cols.sum(axis=1))

xpad = np.pad(x[0, 0], 1)
naive = np.array([[(xpad[2 * i:2 * i + 3, 2 * j:2 * j + 3] * w[0, 0]).sum() for j in range(3)] for i in range(3)])
assert np.allclose(y[0, 0], naive)

fig, axes = plt.subplots(1, 2, figsize=(9, 4))
axes[0].imshow(xpad, cmap="viridis")
axes[0].set_title("padded 5x5 image (zeros around)")
axes[1].imshow(cols, cmap="viridis")
axes[1].set_title("im2col: row = output pixel, column = (c, i, j)")
for ax, arr in ((axes[0], xpad), (axes[1], cols)):
    for (i, j), value in np.ndenumerate(arr):
        ax.text(j, i, f"{value:.0f}", ha="center", va="center", color="w", fontsize=7)
plt.show()"""),
    ("md", """The backward of the gather adds each window's gradient back where the window came from
(col2im): a pixel covered by several windows gets the sum. With stride 1 (the `hybrid`
stem) and stride 2 (a second stem conv) it is checked the same way:"""),
    ("code", """for name in ("conv2d_stride1", "conv2d"):
    report = gradcheck.check_layer(name)
    print(f"{name}: worst relative error {report.max_rel_err:.1e}")
    assert report.passed"""),
    ("md", """## 2. LayerNorm's backward, step by step

For one row `x` of `D` numbers: `mu = mean(x)`, `var = mean((x - mu)^2)`,
`r = 1 / sqrt(var + eps)`, `xhat = (x - mu) r`, `y = xhat w + b`. First the forward, by
hand and by the library."""),
    ("code", """D, eps = 5, 1e-5
x = 2 * rng.standard_normal(D) + 1
w, b = 1 + 0.3 * rng.standard_normal(D), 0.1 * rng.standard_normal(D)

mu = x.mean()
var = ((x - mu) ** 2).mean()
r = 1 / np.sqrt(var + eps)
xhat = (x - mu) * r
y = xhat * w + b
y_code, cache = layers.layernorm_forward(x, w, b)
assert np.allclose(y, y_code)


def numeric_jacobian(f, x, step=1e-6):
    \"\"\"J[i, j] = d f(x)_i / d x_j, by centered differences.\"\"\"
    columns = []
    for j in range(x.size):
        nudge = np.zeros_like(x)
        nudge[j] = step
        columns.append((f(x + nudge) - f(x - nudge)) / (2 * step))
    return np.stack(columns, axis=-1)"""),
    ("md", """**Step 1: the variance.** By the product rule,
`d var / d x_i = (2/D) sum_j (x_j - mu) (delta_ij - 1/D)`. The `1/D` term is the path
through the mean, and it vanishes: the deviations `x_j - mu` sum to zero. So
`d var / d x_i = (2/D) (x_i - mu)`, as if the mean were a constant."""),
    ("code", """with_mean_term = 2 / D * (np.eye(D) - 1 / D) @ (x - mu)
without_mean_term = 2 / D * (x - mu)
numeric = numeric_jacobian(lambda x: np.atleast_1d(((x - x.mean()) ** 2).mean()), x)[0]
print(with_mean_term, without_mean_term, numeric, sep="\\n")
assert np.allclose(with_mean_term, without_mean_term)
assert np.allclose(numeric, without_mean_term, atol=1e-7)"""),
    ("md", """**Step 2: the Jacobian of `xhat`.** With `d mu / d x_i = 1/D` and
`d r / d x_i = -r^3 (x_i - mu) / D = -r^2 xhat_i / D`:
`d xhat_j / d x_i = r (delta_ij - 1/D - xhat_j xhat_i / D)`."""),
    ("code", """J = r * (np.eye(D) - 1 / D - np.outer(xhat, xhat) / D)           # J[j, i] = d xhat_j / d x_i
xhat_of = lambda x: (x - x.mean()) / np.sqrt(((x - x.mean()) ** 2).mean() + eps)   # noqa: E731
assert np.allclose(J, numeric_jacobian(xhat_of, x), atol=1e-6)
print(J)"""),
    ("md", """**Step 3: back to one line.** The gradient reaching `xhat` is `g = dy * w`, and
`dx = J^T g`. Since `J` is symmetric, writing out the product gives
`dx = r (g - mean(g) - xhat mean(g xhat))`: no `D x D` matrix needed. With a batch of rows
the means are over the last axis and keep it (`keepdims=True`) so they broadcast."""),
    ("code", """dy = rng.standard_normal(D)
g = dy * w
dx_jacobian = J.T @ g
dx_one_line = r * (g - g.mean() - xhat * (g * xhat).mean())
dx_code, dw_code, db_code = layers.layernorm_backward(dy, cache)
print(dx_jacobian, dx_one_line, dx_code, sep="\\n")
assert np.allclose(dx_jacobian, dx_one_line) and np.allclose(dx_one_line, dx_code)
assert np.allclose(dw_code, dy * xhat) and np.allclose(db_code, dy)

report = gradcheck.check_layer("layernorm")          # rows of a [2, 3, 8] input
print(report)
assert report.passed"""),
    ("md", """## 3. Attention's backward

In each head: `s = q k^T / sqrt(d)`, `a = softmax(s)` row by row, `o = a v`. Backward with
the matrix-product rule (for `Z = U V`: `dU = dZ V^T`, `dV = U^T dZ`), last line first:"""),
    ("code", """B, h, N, d = 2, 2, 5, 4
q, k, v = (rng.standard_normal((B, h, N, d)) for _ in range(3))
o, cache = transformer.sdpa_forward(q, k, v)               # [B, h, N, d]
a = cache.a                                                # [B, h, N, N], rows sum to one
do = rng.standard_normal(o.shape)

da = do @ v.swapaxes(-1, -2)                               # o = a v  ->  da = do v^T
dv = a.swapaxes(-1, -2) @ do                               #              dv = a^T do
ds = a * (da - (da * a).sum(axis=-1, keepdims=True))       # softmax, row by row
ds = ds / np.sqrt(d)                                       # s = q k^T / sqrt(d)
dq = ds @ k                                                #   -> dq = ds k / sqrt(d)
dk = ds.swapaxes(-1, -2) @ q                               #      dk = ds^T q / sqrt(d)

for mine, library in zip((dq, dk, dv), transformer.sdpa_backward(do, cache)):
    assert np.allclose(mine, library)
report = gradcheck.check_layer("attention")                # with the projections and 2 heads
print(report)
assert report.passed"""),
    ("md", """## 4. The whole model

`check_model` nudges every input pixel and every parameter of a small ViT (float64), and
compares with the hand-derived backward of the whole network. In a terminal,
`minivit gradcheck --model` does this for the configurations the presets train (conv
stem, smaller images, drop path, mean and sequence pooling) through both the engine and
the fast path."""),
    ("code", """model = minivit.ViT(img_size=8, patch_size=4, embed_dim=8, depth=2, num_heads=2, mlp_ratio=2.0,
                    num_classes=3, dtype="float64", backend="numpy")
report = gradcheck.check_model(model, batch_size=2)
print(report)
assert report.passed"""),
] + exercise_cells() + [
    ("md", """## 7. The shipped model: predictions and attention maps

minivit ships a trained `hybrid` model (85.6% on CIFAR-10's test images after 30 minutes on
a 2-core CPU; `minivit/pretrained/README.md`). Here it is on 16 images of the sample."""),
    ("code", """model, meta = checkpoint.load_model(checkpoint.SHIPPED_MODEL, backend="numpy")
images, labels = x_test[:16], y_test[:16]
x = data.normalize(images, meta["mean"], meta["std"], model.config.dtype)
logits, maps, readout = model.attention(x)          # maps[l]: [B, heads, N, N], block l
assert np.allclose(readout.sum(axis=1), 1.0, atol=1e-5)  # readout [B, 64]: the head's pooling weights
pred = logits.argmax(axis=1)
print(f"{(pred == labels).sum()} of 16 right")

fig, axes = plt.subplots(2, 8, figsize=(14, 4.2))
for ax, image, y_true, y_pred in zip(axes.flat, images, labels, pred):
    ax.imshow(image.transpose(1, 2, 0))
    ax.set_title(f"{data.CLASSES[y_pred]}\\n(true {data.CLASSES[y_true]})", fontsize=8,
                 color="green" if y_pred == y_true else "red")
    ax.axis("off")
plt.show()"""),
    ("md", """Where the head looks. This model's head reads no class token: sequence pooling weighs
the 64 patch tokens' outputs by a learned softmax (`readout`) and classifies their
weighted sum. Below, for four images: those pooling weights; each head's attention in the
last block from that reader (the patch tokens' attention rows mixed with the pooling
weights) to the 64 patches; and the attention rollout through all blocks (attention
chained through the residual connections), read the same way."""),
    ("code", """pooling = attention_maps.to_grid(readout)                                                 # [B, 8, 8]
heads = attention_maps.to_grid(attention_maps.reader_attention(maps[-1], readout))  # [B, heads, 8, 8]
roll = attention_maps.to_grid(attention_maps.rollout(maps, readout))                  # [B, 8, 8]
assert np.allclose(maps[-1].sum(axis=-1), 1.0, atol=1e-5)                            # rows of probabilities

shown = (0, 1, 2, 3)
cols = 3 + heads.shape[1]
fig, axes = plt.subplots(len(shown), cols, figsize=(2.2 * cols, 2.2 * len(shown)))
for row, i in zip(axes, shown):
    panels = ([("image", None), ("pooling", pooling[i])] + [(f"head {j}", m) for j, m in enumerate(heads[i])]
              + [("rollout", roll[i])])
    for ax, (name, m) in zip(row, panels):
        ax.imshow(images[i].transpose(1, 2, 0))
        if m is not None:
            ax.imshow(m, cmap="inferno", alpha=0.6, extent=(-0.5, 31.5, 31.5, -0.5), interpolation="nearest")
        ax.set_title(data.CLASSES[labels[i]] if m is None else name, fontsize=8)
        ax.axis("off")
plt.show()"""),
    ("md", """## Where next

- [docs/gradients.md](../docs/gradients.md): every backward pass derived, in the code's
  names, each with its check command.
- `minivit gradcheck` (every layer, then the models) and `minivit gradcheck --layer NAME`.
- [overfit_one_batch.py](overfit_one_batch.py): what memorizing one batch proves about a
  hand-written network, and what it does not.
- [walkthrough.py](walkthrough.py): the model built piece by piece, each piece checked.
- [docs/adding-a-layer.md](../docs/adding-a-layer.md): add a layer or a model option of
  your own, with its backward and its check (RMSNorm is the worked example)."""),
]


def build():
    nb = new_notebook()
    nb.cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in CELLS]
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"      # fixed ids: a rebuild changes only what the cells say
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else PATH
    nbformat.write(build(), path)
    print(f"wrote {path}")
