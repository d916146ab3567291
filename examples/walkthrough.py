"""Build the ViT piece by piece, as the reference post does, and at every piece run its
forward, its hand-written backward and a finite-difference check, printing the shapes.

    python examples/walkthrough.py                    # a tiny configuration, seconds on a CPU
    python examples/walkthrough.py --embed-dim 24 --heads 3

Every check runs in float64, where a correct backward agrees with finite differences to
about 1e-9 (the pass mark is 1e-7). The pieces are the engine's: minivit/engine/layers.py
(patches, tokens, LayerNorm) and minivit/engine/transformer.py (attention, the MLP, the
block); the derivations are in docs/gradients.md.
"""

import argparse

import numpy as np

import minivit
from minivit.engine import gradcheck, layers, transformer

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--img-size", type=int, default=8)
ap.add_argument("--patch-size", type=int, default=4)
ap.add_argument("--embed-dim", type=int, default=8)
ap.add_argument("--heads", type=int, default=2)
ap.add_argument("--batch", type=int, default=2)
args = ap.parse_args()

rng = np.random.default_rng(0)
# the names of docs/gradients.md: B batch, C channels, H = W image side, p patch size,
# D width, h heads, P patches, N tokens, F the MLP's hidden width
B, C, H, p, D, h = args.batch, 3, args.img_size, args.patch_size, args.embed_dim, args.heads
P, N, F = (H // p) ** 2, (H // p) ** 2 + 1, 2 * D


def show(title, report, **shapes):
    print(f"\n== {title}")
    for name, shape in shapes.items():
        print(f"   {name:<10s} {shape}")
    worst = max(report.results, key=lambda r: r.rel_err)
    print(f"   gradcheck: {'pass' if report.passed else 'FAIL'} (worst: {worst.name}, rel err "
          f"{worst.rel_err:.1e} over {sum(r.checked for r in report.results)} elements)")
    assert report.passed, str(report)


# 1. Patch embedding: a p x p conv with stride p is one matmul on the flattened patches.
x = rng.standard_normal((B, C, H, H))
w_patch, b_patch = 0.2 * rng.standard_normal((D, C, p, p)), 0.1 * rng.standard_normal(D)
tokens, cache = layers.patch_embed_forward(x, w_patch, b_patch)
dx, dw, db = layers.patch_embed_backward(rng.standard_normal(tokens.shape), cache)
show("patch embedding", gradcheck.check(layers.patch_embed_forward, layers.patch_embed_backward,
                                        {"x": x, "w": w_patch, "b": b_patch}),
     image=x.shape, patches=layers.patchify(x, p).shape, tokens=tokens.shape, dx=dx.shape, dw=dw.shape)

# 2. Class token and position embedding: N = P + 1 tokens.
cls, pos = rng.standard_normal((1, 1, D)), rng.standard_normal((1, N, D))
embedded, _ = layers.token_embed_forward(tokens, cls, pos)
show("class token + position embedding",
     gradcheck.check(layers.token_embed_forward, layers.token_embed_backward,
                     {"x": tokens, "cls_token": cls, "pos_embed": pos}),
     tokens=tokens.shape, embedded=embedded.shape)

# 3. LayerNorm over the width of every token.
norm1_w, norm1_b = 1 + 0.1 * rng.standard_normal(D), 0.1 * rng.standard_normal(D)
normed, _ = layers.layernorm_forward(embedded, norm1_w, norm1_b)
show("layernorm", gradcheck.check(layers.layernorm_forward, layers.layernorm_backward,
                                  {"x": embedded, "w": norm1_w, "b": norm1_b}), x=embedded.shape, y=normed.shape)

# 4. Multi-head self-attention with the fused qkv projection.
attn = {"in_proj_weight": 0.4 * rng.standard_normal((3 * D, D)), "in_proj_bias": 0.1 * rng.standard_normal(3 * D),
        "out_proj_weight": 0.4 * rng.standard_normal((D, D)), "out_proj_bias": 0.1 * rng.standard_normal(D)}
attended, cache = transformer.attention_forward(normed, *attn.values(), h)
q, a = cache.sdpa.q, cache.sdpa.a
show("multi-head self-attention",
     gradcheck.check(lambda **kw: transformer.attention_forward(**kw, num_heads=h),
                     transformer.attention_backward, {"x": normed, **attn}),
     x=normed.shape, q_k_v=q.shape, attention=a.shape, y=attended.shape)
print(f"   attention rows sum to one: {np.allclose(a.sum(-1), 1)}")

# 5. The residual stream, its second norm, then the MLP: Linear -> GELU -> Linear.
x1 = embedded + attended                                 # x1 = x + attn(norm1(x))
norm2_w, norm2_b = 1 + 0.1 * rng.standard_normal(D), 0.1 * rng.standard_normal(D)
normed2, _ = layers.layernorm_forward(x1, norm2_w, norm2_b)        # norm2(x1)
mlp = {"w1": 0.4 * rng.standard_normal((F, D)), "b1": 0.1 * rng.standard_normal(F),
       "w2": 0.4 * rng.standard_normal((D, F)), "b2": 0.1 * rng.standard_normal(D)}
y_mlp, _ = transformer.mlp_forward(normed2, *mlp.values())
show("MLP (GELU)", gradcheck.check(transformer.mlp_forward, transformer.mlp_backward, {"x": normed2, **mlp}),
     x=normed2.shape, hidden=(B, N, F), y=y_mlp.shape)

# 6. A pre-norm transformer block: x1 = x + attn(norm1(x)), y = x1 + mlp(norm2(x1)).
block = {"norm1.weight": norm1_w, "norm1.bias": norm1_b, "attn.in_proj_weight": attn["in_proj_weight"],
         "attn.in_proj_bias": attn["in_proj_bias"], "attn.out_proj.weight": attn["out_proj_weight"],
         "attn.out_proj.bias": attn["out_proj_bias"], "norm2.weight": norm2_w, "norm2.bias": norm2_b,
         "mlp.0.weight": mlp["w1"], "mlp.0.bias": mlp["b1"], "mlp.2.weight": mlp["w2"], "mlp.2.bias": mlp["b2"]}
y, _ = transformer.block_forward(embedded, block, h)
same = np.allclose(y, x1 + y_mlp, rtol=1e-12)
print(f"\n   the block is the pieces above, x1 + mlp(norm2(x1)): {same}")
assert same


def block_backward(dy, cache):
    dx, grads = transformer.block_backward(dy, cache)
    return {"x": dx, **grads}


show("transformer block", gradcheck.check(lambda x, **p: transformer.block_forward(x, p, h), block_backward,
                                          {"x": embedded, **block}), x=embedded.shape, y=y.shape)

# 7. The whole model, with the loss on top.
model = minivit.ViT(img_size=H, patch_size=p, embed_dim=D, depth=2, num_heads=h, mlp_ratio=2.0,
                    num_classes=3, dtype="float64")
logits = model.forward(x)
labels = np.arange(B) % 3
loss, dlogits = minivit.cross_entropy(logits, labels, label_smoothing=0.1)


def loss_backward(dloss, dlogits):        # the loss returns its own gradient: scale it by dloss
    return dloss * dlogits


# the check runs on exactly this loss: these logits, these labels, smoothing 0.1
show("cross-entropy (label smoothing 0.1)",
     gradcheck.check(lambda logits: minivit.cross_entropy(logits, labels, label_smoothing=0.1),
                     loss_backward, {"logits": logits}),
     logits=logits.shape, labels=labels.shape, loss=f"{float(loss):.4f}")
show("the whole ViT", gradcheck.check_model(model, x), image=x.shape, logits=logits.shape,
     parameters=f"{model.num_parameters()} in {len(model.state_dict())} tensors")
print("\nEvery piece passed its gradient check.")
