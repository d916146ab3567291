"""The engine: the Vision Transformer as a student reads it, every layer a forward and a
hand-derived backward, checked by finite differences. It imports nothing of the rest of
minivit. Read in this order:

    backend.py      the NumPy/CuPy switch (xp), and @kernel (one GPU launch)
    layers.py       linear, patch embedding, conv, tokens, LayerNorm, RMSNorm, softmax, GELU
    transformer.py  attention, the MLP, the pre-norm block, pooling and the head
    resize.py       area resizing (progressive resizing's smaller images)
    config.py       ViTConfig: every field that fixes the network
    draws.py        StepDraws: a training step's random draws (stochastic depth)
    model.py        ViT: the parameters by name, forward and backward
    loss.py         cross_entropy -> (loss, dlogits)
    optim.py        Adam, AdamW, Muon, clip_grad_norm, EMA
    gradcheck.py    every backward against finite differences
    errors.py       the errors a user can fix
"""
