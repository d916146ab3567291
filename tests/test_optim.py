import math

import numpy as np
import pytest

import minivit
from minivit.model import Param


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
    from minivit.optim import segments
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
