"""How a run sets its optimizer up (run.py): weight decay on the weight matrices and conv
kernels only; Muon for the blocks' matrices and the patch embedding, AdamW for the rest
(sequence pooling's weight among them); the fast path's Muon unless the engine trains;
parameters next to each other in the model's flat buffer updated as one slice."""

import numpy as np

import minivit
from minivit.config import TrainConfig
from minivit.engine import optim
from minivit.engine.model import Param
from minivit.engine.optim import segments
from minivit import fast
from minivit.run import decay_groups, make_optimizer

from helpers import tiny_config

H = minivit.to_host


def test_weight_decay_only_on_weight_matrices():
    groups = decay_groups(minivit.ViT(embed_dim=24, depth=1, num_heads=3), 0.05)
    decay = {p.name for p in groups[0]["params"]}
    assert "blocks.0.attn.in_proj_weight" in decay and "patch_embed.proj.weight" in decay
    assert not decay & {"vit_embed.pos_embed", "vit_embed.cls_token", "blocks.0.norm1.weight",
                        "head.bias"}
    assert groups[1]["weight_decay"] == 0.0


def test_sequence_pooling_weight_is_trained_by_adamw_with_decay():
    model = minivit.ViT(**tiny_config(pool="seq"), dtype="float64")
    opt = make_optimizer(TrainConfig.from_preset("hybrid", weight_decay=0.05), model)
    adamw = [p.name for g in opt.param_groups if g["weight_decay"] for p in g["params"]]
    assert "attention_pool.weight" in adamw
    assert "attention_pool.weight" not in opt.momentum_of and "blocks.0.mlp.0.weight" in opt.momentum_of


def test_muon_is_the_fast_paths_unless_the_engine_trains():
    model = minivit.ViT(**tiny_config())
    cfg = TrainConfig.from_preset("hybrid")
    assert type(make_optimizer(cfg, model)) is fast.Muon
    assert type(make_optimizer(TrainConfig.from_preset("hybrid", engine="reference"), model)) is optim.Muon


def test_muon_on_a_model_updates_slices_of_its_flat_buffer_like_tensor_by_tensor(backend):
    """make_optimizer's Muon takes the blocks' matrices and the patch embedding, and leaves
    AdamW a subset of the model's parameters: the ones that lie next to each other in the
    flat buffer update as one slice, with the same weights as every parameter updated as a
    tensor of its own."""
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
