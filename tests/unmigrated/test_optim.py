import math

import numpy as np
import pytest

import minivit
from minivit.engine.model import Param


H = minivit.to_host


def make_params(seed=0, dtype=np.float64, backend="numpy"):
    rng = np.random.default_rng(seed)
    xp = minivit.get_xp(backend)
    shapes = {"w": (3, 4), "b": (4,)}
    return [Param(k, xp.asarray(rng.standard_normal(s).astype(dtype)), xp.zeros(s, dtype))
            for k, s in shapes.items()]


def paper_adam(w, grads, lr, b1, b2, eps, wd, decoupled):
    """Adam as written in Kingma & Ba (bias-corrected m-hat and v-hat), element by element."""
    w = list(w)
    m, v = [0.0] * len(w), [0.0] * len(w)
    for t, g in enumerate(grads, start=1):
        for i in range(len(w)):
            gi = g[i]
            if decoupled:
                w[i] *= 1 - lr * wd
            else:
                gi += wd * w[i]
            m[i] = b1 * m[i] + (1 - b1) * gi
            v[i] = b2 * v[i] + (1 - b2) * gi * gi
            mhat, vhat = m[i] / (1 - b1 ** t), v[i] / (1 - b2 ** t)
            w[i] -= lr * mhat / (math.sqrt(vhat) + eps)
    return w


@pytest.mark.parametrize("cls, wd", [(minivit.Adam, 0.0), (minivit.Adam, 0.05), (minivit.AdamW, 0.05)])
def test_adam_follows_the_paper_update(cls, wd, backend):
    params = make_params(backend=backend)
    start = [H(p.data).copy() for p in params]
    opt = cls(params, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=wd)
    rng = np.random.default_rng(1)
    history = []
    for _ in range(5):
        for p in params:
            p.grad[...] = minivit.to_device(rng.standard_normal(p.grad.shape), minivit.get_xp(backend))
        history.append([H(p.grad).copy() for p in params])
        opt.step()
    for j, p in enumerate(params):
        ref = paper_adam(start[j].ravel(), [h[j].ravel() for h in history], 0.01, 0.8, 0.99, 1e-6,
                         wd, decoupled=cls is minivit.AdamW)
        np.testing.assert_allclose(H(p.data).ravel(), ref, rtol=1e-12, atol=1e-14)


def test_adamw_decay_differs_from_adam_l2():
    a, b = make_params(), make_params()
    for ps in (a, b):
        for p in ps:
            p.grad[...] = 0.1
    minivit.Adam(a, lr=0.1, weight_decay=0.5).step()
    minivit.AdamW(b, lr=0.1, weight_decay=0.5).step()
    assert not np.allclose(a[0].data, b[0].data)


def test_param_groups_override_weight_decay():
    params = make_params()
    for p in params:
        p.grad[...] = 0.0
    before = [p.data.copy() for p in params]
    opt = minivit.AdamW([{"params": params[:1]}, {"params": params[1:], "weight_decay": 0.0}],
                        lr=0.1, weight_decay=0.5)
    opt.step()
    np.testing.assert_allclose(params[0].data, before[0] * (1 - 0.1 * 0.5))
    np.testing.assert_array_equal(params[1].data, before[1])


def test_optimizer_state_round_trip():
    params = make_params()
    opt = minivit.Adam(params, lr=0.01)
    for p in params:
        p.grad[...] = 1.0
    opt.step()
    state = opt.state_dict()
    clone_params = [Param(p.name, p.data.copy(), p.grad.copy()) for p in params]
    clone = minivit.Adam(clone_params, lr=0.5)
    clone.load_state_dict(state)
    opt.step()
    clone.step()
    for p, q in zip(params, clone_params):
        np.testing.assert_array_equal(p.data, q.data)
    with pytest.raises(ValueError, match="optimizer state is missing 4 entries"):
        clone.load_state_dict({"t": 1, "lr": 0.1, "betas": (0.9, 0.99), "eps": 1e-8})


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=0), "learning rate must be positive, got 0"),
    (dict(lr=1e-3, betas=(1.0, 0.9)), r"betas must lie in \[0, 1\)"),
    (dict(lr=1e-3, weight_decay=-1), "eps and weight_decay must be >= 0"),
])
def test_bad_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        minivit.Adam(make_params(), **kwargs)


def test_clip_grad_norm_global(backend):
    params = make_params(backend=backend)
    params[0].grad[...] = 3.0   # 12 elements
    params[1].grad[...] = 4.0   # 4 elements
    total = math.sqrt(12 * 9 + 4 * 16)
    norm = minivit.clip_grad_norm(params, max_norm=1.0)
    assert abs(float(norm) - total) < 1e-12
    new_total = math.sqrt(sum(float((p.grad ** 2).sum()) for p in params))
    assert abs(new_total - 1.0) < 1e-5
    np.testing.assert_allclose(H(params[0].grad)[0, 0] / H(params[1].grad)[0], 0.75)  # direction kept
    before = [H(p.grad).copy() for p in params]
    minivit.clip_grad_norm(params, max_norm=100.0)                        # under the cap: unchanged
    for p, g in zip(params, before):
        np.testing.assert_array_equal(H(p.grad), g)


def test_warmup_cosine_schedule():
    lr = [minivit.warmup_cosine(s, total_steps=110, base_lr=1.0, warmup_steps=10, min_lr=0.1)
          for s in range(120)]
    assert lr[0] == pytest.approx(0.1) and lr[9] == pytest.approx(1.0)
    assert lr[10] == pytest.approx(1.0)
    assert lr[60] == pytest.approx(0.55)                     # halfway down the cosine
    assert lr[110] == pytest.approx(0.1) and lr[119] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lr[10:], lr[11:]))    # never rises after warmup


def test_matches_torch_adam_and_adamw():
    torch = pytest.importorskip("torch")
    for cls, tcls in ((minivit.Adam, torch.optim.Adam), (minivit.AdamW, torch.optim.AdamW)):
        params = make_params(dtype=np.float32)
        tparams = [torch.nn.Parameter(torch.from_numpy(p.data.copy())) for p in params]
        opt = cls(params, lr=3e-3, weight_decay=0.1)
        topt = tcls(tparams, lr=3e-3, weight_decay=0.1)
        rng = np.random.default_rng(2)
        for _ in range(20):
            for p, tp in zip(params, tparams):
                g = rng.standard_normal(p.grad.shape).astype(np.float32)
                p.grad[...] = g
                tp.grad = torch.from_numpy(g.copy())
            opt.step()
            topt.step()
        for p, tp in zip(params, tparams):
            np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_a_whole_model_updates_as_one_flat_buffer_like_tensor_by_tensor(backend):
    """model.parameters() run as one flat segment; the same parameters given one by one
    (copies) run tensor by tensor: both give the same weights, groups and decay included."""
    from minivit.engine.optim import segments
    from minivit.train import decay_groups
    model = minivit.ViT(embed_dim=12, depth=1, num_heads=3, dtype="float64", backend=backend)
    assert len(segments(model.parameters())) == 1
    copies = [Param(p.name, p.data.copy(), p.grad.copy()) for p in model.parameters()]
    assert len(segments(copies)) == len(copies)
    groups = decay_groups(model, 0.1)
    by_name = {p.name: p for p in copies}
    copy_groups = [{"params": [by_name[p.name] for p in g["params"]], "weight_decay": g["weight_decay"]}
                   for g in groups]
    a, b = minivit.AdamW(groups, lr=1e-2), minivit.AdamW(copy_groups, lr=1e-2)
    rng = np.random.default_rng(0)
    xp = minivit.get_xp(backend)
    for _ in range(3):
        g = rng.standard_normal(model.flat_grads.shape)
        model.flat_grads[...] = xp.asarray(g)
        for p in model.parameters():
            by_name[p.name].grad[...] = p.grad
        a.step()
        b.step()
    for p in model.parameters():
        np.testing.assert_allclose(H(p.data), H(by_name[p.name].data), rtol=1e-13, atol=1e-15,
                                   err_msg=p.name)
    a.step(ok=xp.zeros((), dtype=bool))              # a step flagged bad changes nothing
    np.testing.assert_array_equal(H(model.params["head.weight"]), H(by_name["head.weight"].data))


def plain_newton_schulz(g, steps=5):
    """The quintic iteration written out on float64 NumPy, X <- a X + b (X X^T) X + c (X X^T)^2 X."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g / (np.linalg.norm(g) + 1e-7)
    flip = x.shape[0] > x.shape[1]
    x = x.T if flip else x
    for _ in range(steps):
        x = a * x + b * (x @ x.T) @ x + c * (x @ x.T) @ (x @ x.T) @ x
    return x.T if flip else x


@pytest.mark.parametrize("shape", [(8, 8), (24, 6), (6, 24)])
def test_orthogonalize_keeps_the_singular_vectors_and_sets_the_values_near_one(shape, backend):
    rng = np.random.default_rng(3)
    m, n = shape
    u, _ = np.linalg.qr(rng.standard_normal((m, min(m, n))))
    v, _ = np.linalg.qr(rng.standard_normal((n, min(m, n))))
    s = np.linspace(0.1, 3.0, min(m, n))                      # singular values 30x apart
    g = u @ np.diag(s) @ v.T
    o = H(minivit.engine.optim.orthogonalize(minivit.to_device(g, minivit.get_xp(backend))))
    np.testing.assert_allclose(o, plain_newton_schulz(g), rtol=1e-10, atol=1e-12)
    d = u.T @ o @ v                                           # diagonal when U, V are kept
    assert np.abs(d - np.diag(np.diag(d))).max() < 1e-9
    assert 0.6 < np.diag(d).min() and np.diag(d).max() < 1.25, np.diag(d)


def paper_muon(w, grads, lr, mu, wd, steps=5):
    """Muon for one matrix, step by step: B = mu B + G; O = NS(G + mu B); W -= lr wd W + lr 0.2 sqrt(max(m, n)) O."""
    buf = np.zeros_like(w)
    for g in grads:
        buf = mu * buf + g
        o = plain_newton_schulz(g + mu * buf, steps)
        w = w - lr * wd * w - lr * 0.2 * math.sqrt(max(w.shape)) * o
    return w


def test_muon_updates_matrices_by_muon_and_the_rest_by_adamw(backend):
    xp = minivit.get_xp(backend)
    rng = np.random.default_rng(4)
    shapes = {"m": (6, 4), "k": (5, 2, 2, 2), "b": (4,)}     # a matrix, a conv kernel, a bias
    params = [Param(k, minivit.to_device(rng.standard_normal(s), xp), xp.zeros(s)) for k, s in shapes.items()]
    start = {p.name: H(p.data).copy() for p in params}
    opt = minivit.Muon(params[:2], [params[2]], lr=0.01, betas=(0.8, 0.99), eps=1e-6,
                       weight_decay=0.1, momentum=0.9)
    history = []
    for step in range(4):
        for p in params:
            p.grad[...] = minivit.to_device(rng.standard_normal(p.grad.shape), xp)
        if step == 2:                                     # a skipped step (ok False) changes nothing
            before = [H(a).copy() for a in [p.data for p in params] + list(opt.buf.values())]
            opt.step(xp.zeros((), dtype=bool))
            after = [H(a) for a in [p.data for p in params] + list(opt.buf.values())]
            assert all(np.array_equal(a, b) for a, b in zip(before, after))
            opt.t -= 1                                    # (Adam counts it; the reference does not)
            continue
        history.append({p.name: H(p.grad).copy() for p in params})
        opt.step()
    for p in params[:2]:
        m = len(p.data)
        ref = paper_muon(start[p.name].reshape(m, -1), [h[p.name].reshape(m, -1) for h in history],
                         0.01, 0.9, 0.1)
        np.testing.assert_allclose(H(p.data).reshape(m, -1), ref, rtol=1e-10, atol=1e-12)
    ref = paper_adam(start["b"], [h["b"] for h in history], 0.01, 0.8, 0.99, 1e-6, 0.1, decoupled=True)
    np.testing.assert_allclose(H(params[2].data), ref, rtol=1e-12)


def test_muon_state_round_trip():
    rng = np.random.default_rng(5)
    make = lambda: [Param("m", rng.standard_normal((4, 3)), np.zeros((4, 3))),
                    Param("b", rng.standard_normal(3), np.zeros(3))]
    a = make()
    b = [Param(p.name, p.data.copy(), p.grad.copy()) for p in a]
    opt_a, opt_b = minivit.Muon(a[:1], a[1:], lr=0.01), minivit.Muon(b[:1], b[1:], lr=0.5)
    for p in a:
        p.grad[...] = 1.0
    opt_a.step()
    opt_b.load_state_dict(opt_a.state_dict())
    for p, q in zip(a, b):
        q.data[...], p.grad[...], q.grad[...] = p.data, 0.3, 0.3
    opt_a.step()
    opt_b.step()
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p.data, q.data)
    with pytest.raises(ValueError, match="missing 1 entries .first: buf.m."):
        opt_b.load_state_dict({k: v for k, v in opt_a.state_dict().items() if k != "buf.m"})


def test_muon_on_a_model_updates_slices_of_its_flat_buffer_like_tensor_by_tensor(backend):
    """make_optimizer's Muon leaves AdamW a subset of the model's parameters: the ones
    that lie next to each other in the flat buffer update as one slice, with the same
    weights as every parameter updated as a tensor of its own."""
    from minivit.config import TrainConfig
    from minivit.engine.optim import segments
    from minivit.train import make_optimizer
    cfg = TrainConfig.from_preset("sample", embed_dim=12, depth=2, num_heads=3, dtype="float64",
                                  optimizer="muon", stem_channels=4)
    model = minivit.ViT(cfg.model_config(), backend=backend)
    opt = make_optimizer(cfg, model)
    adamw = [p for g in opt.param_groups for p in g["params"]]
    muon = [p for ps in opt.stacks.values() for p in ps]
    assert sorted(p.name for p in adamw + muon) == sorted(p.name for p in model.parameters())
    assert {p.name for p in muon} == {p.name for p in model.parameters()
                                      if p.name.startswith(("blocks.", "patch_embed.")) and p.data.ndim >= 2}
    runs = segments(adamw)
    assert len(runs) < len(adamw) and sum(w.size for w, _, _ in runs) == sum(p.data.size for p in adamw)
    copy = {p.name: Param(p.name, p.data.copy(), p.grad.copy()) for p in model.parameters()}
    twin = minivit.Muon([copy[p.name] for p in muon],
                        [{"params": [copy[p.name] for p in g["params"]], "weight_decay": g["weight_decay"]}
                         for g in opt.param_groups], lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(0)
    xp = minivit.get_xp(backend)
    for _ in range(3):
        model.flat_grads[...] = xp.asarray(rng.standard_normal(model.flat_grads.shape))
        for p in model.parameters():
            copy[p.name].grad[...] = p.grad
        opt.step()
        twin.step()
    for p in model.parameters():
        np.testing.assert_allclose(H(p.data), H(copy[p.name].data), rtol=1e-12, atol=1e-14, err_msg=p.name)
