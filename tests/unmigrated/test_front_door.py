"""What a user meets outside the happy path: run folders that never mix, --resume without
--out, --init-from, --config, checkpoints inside long epochs, the sample's preset, plots
that explain themselves, attention maps written beside their checkpoint."""

import json
import os

import numpy as np
import pytest

from minivit import checkpoint as ckpt
from minivit import cli, data
from minivit import train as train_module
from minivit import ViT
from minivit.config import TrainConfig, ViTConfig
from minivit.errors import MinivitError
from minivit.files import read_jsonl
from minivit.train import train

TINY = ["--embed-dim", "16", "--depth", "1", "--num-heads", "2", "--mlp-ratio", "2",
        "--batch-size", "32", "--limit-train", "200", "--no-progress", "--no-plots"]
TINY_CFG = dict(embed_dim=16, depth=1, num_heads=2, mlp_ratio=2.0, batch_size=32, eval_batch_size=128)


def quiet(*args):
    pass


def run(argv):
    """minivit's exit code for argv (argparse-style errors exit through SystemExit)."""
    try:
        return cli.main(argv)
    except SystemExit as e:
        return e.code


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished one-epoch run on the sample."""
    out = tmp_path_factory.mktemp("front") / "run"
    assert run(["train", "--epochs", "1", "--out", str(out), *TINY]) == 0
    return out


def test_a_new_run_refuses_a_folder_holding_other_files(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "metrics.jsonl").write_text("my own notes\n")
    cfg = TrainConfig.from_preset("sample", epochs=1, limit_train=200, **TINY_CFG)
    with pytest.raises(MinivitError, match=r"mine is not empty \(it holds metrics.jsonl\).*choose another --out"):
        train(cfg, out=out, progress=False, plots=False, log=quiet)
    assert sorted(os.listdir(out)) == ["metrics.jsonl"]              # nothing written, nothing lost
    assert (out / "metrics.jsonl").read_text() == "my own notes\n"


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli.time, "strftime", lambda fmt: "20261124-120000")
    for seed in ("1", "2"):
        assert cli.main(["train", "--epochs", "1", "--seed", seed, *TINY]) == 0
    runs = sorted(os.listdir(tmp_path / "runs"))
    assert runs == ["sample-20261124-120000", "sample-20261124-120000-2"]
    seeds = [json.loads((tmp_path / "runs" / r / "config.json").read_text())["seed"] for r in runs]
    assert seeds == [1, 2]
    assert all(len(read_jsonl(tmp_path / "runs" / r / "metrics.jsonl")) == 1 for r in runs)
    assert "Run folder: runs/sample-20261124-120000-2" in capsys.readouterr().out


def test_a_failed_start_leaves_no_empty_folder(tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise data.DataError("the data broke")
    monkeypatch.setattr(train_module, "prepare_data", broken)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--epochs", "1", "--out", "new/run", *TINY]) == 2
    assert "the data broke" in capsys.readouterr().err
    assert not (tmp_path / "new" / "run").exists()
    assert run(["train", "--epochs", "1", *TINY]) == 2          # the default folder too
    assert os.listdir(tmp_path / "runs") == []


def test_resume_without_out_continues_the_latest_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run(["train", "--resume"]) == 2
    assert "no run under runs/ holds a checkpoint.npz" in capsys.readouterr().err
    assert run(["train", "--epochs", "2", "--out", "runs/older", *TINY]) == 0
    cfg = TrainConfig.from_preset("sample", epochs=2, limit_train=200, **TINY_CFG)
    train(cfg, out=tmp_path / "runs" / "newer", stop_after_epochs=1, progress=False, plots=False, log=quiet)
    capsys.readouterr()
    assert cli.main(["train", "--resume", "--no-progress", "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "Resuming the latest run: runs/newer" in out
    assert [m["epoch"] for m in read_jsonl(tmp_path / "runs" / "newer" / "metrics.jsonl")] == [1, 2]


def test_init_from_starts_a_new_run_from_saved_weights(finished, tmp_path, capsys):
    # a tiny rate: the new run's weights stay where the checkpoint left them
    out = tmp_path / "more"
    assert cli.main(["train", "--init-from", str(finished / "checkpoint.npz"), "--lr", "1e-12",
                     "--weight-decay", "0", "--epochs", "1", "--out", str(out), *TINY[8:]]) == 0
    assert f"Starting from the weights of {finished / 'checkpoint.npz'} (epoch 1)" in capsys.readouterr().out
    a, _, meta_a = ckpt.load(finished / "checkpoint.npz")
    b, _, meta_b = ckpt.load(out / "checkpoint.npz")
    assert meta_b["model"] == meta_a["model"]          # the shape came from the checkpoint
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6, err_msg=k)
    # a scratch run of the same shape moves far from them
    fresh = ViT(ViTConfig.from_dict(meta_a["model"]), seed=0).state_dict()
    assert max(float(np.abs(np.asarray(fresh[k]) - a[k]).max()) for k in a) > 1e-3


def test_init_from_refuses_a_model_that_does_not_fit(finished, capsys):
    assert run(["train", "--init-from", str(finished / "checkpoint.npz"), "--embed-dim", "32",
                     "--epochs", "1", *TINY[2:]]) == 2
    err = capsys.readouterr().err
    assert "its model has embed_dim 16; drop --embed-dim" in err


def test_config_repeats_a_run_with_overrides(finished, tmp_path):
    out = tmp_path / "again"
    assert run(["train", "--config", str(finished / "config.json"), "--seed", "3",
                     "--out", str(out), "--no-progress", "--no-plots"]) == 0
    first = json.loads((finished / "config.json").read_text())
    second = json.loads((out / "config.json").read_text())
    assert second["seed"] == 3
    assert {k: v for k, v in second.items() if k != "seed"} == {k: v for k, v in first.items() if k != "seed"}


def test_config_and_resume_errors_are_clear(tmp_path, capsys):
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert run(["train", "--config", str(tmp_path / "bad.json")]) == 2
    assert "cannot read it as a run's config.json" in capsys.readouterr().err
    (tmp_path / "empty.json").write_text("{}")
    assert run(["train", "--config", str(tmp_path / "empty.json")]) == 2
    assert "holds no training settings" in capsys.readouterr().err
    assert run(["train", "--resume", "--init-from", "x.npz", "--out", str(tmp_path)]) == 2
    assert "give one or the other" in capsys.readouterr().err


def test_a_checkpoint_on_the_clock_inside_an_epoch_resumes_exactly(tmp_path, backend):
    # 720 training images of batch 32: 22 steps an epoch; the clock asks for a checkpoint
    # at every look at the device (every 10 steps); the process dies at step 15
    cfg = TrainConfig.from_preset("sample", epochs=1, limit_train=800, checkpoint_minutes=1e-9, **TINY_CFG)
    kw = dict(progress=False, plots=False, log=quiet, backend=backend)
    train(cfg, out=tmp_path / "straight", **kw)

    def crash(step):
        if step == 15:
            raise RuntimeError("the machine went away")
    with pytest.raises(RuntimeError):
        train(cfg, out=tmp_path / "cut", on_step=crash, **kw)
    _, _, meta = ckpt.load(tmp_path / "cut" / "checkpoint.npz")
    assert meta["step"] == 10 and meta["in_epoch"]["batch"] == 10 and meta["epoch"] == 0
    train(None, out=tmp_path / "cut", resume=True, **kw)
    a, oa, _ = ckpt.load(tmp_path / "straight" / "checkpoint.npz")
    b, ob, _ = ckpt.load(tmp_path / "cut" / "checkpoint.npz")
    for k in list(a) + list(oa):
        np.testing.assert_array_equal(a.get(k, oa.get(k)), b.get(k, ob.get(k)), err_msg=k)

    # with checkpoint_minutes 0 only the epoch's end saves
    cfg0 = TrainConfig.from_preset("sample", epochs=1, limit_train=800, checkpoint_minutes=0, **TINY_CFG)
    with pytest.raises(RuntimeError):
        train(cfg0, out=tmp_path / "none", on_step=crash, **kw)
    assert not (tmp_path / "none" / "checkpoint.npz").exists()


def test_data_pointing_at_the_shipped_sample_picks_the_sample_preset(capsys):
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--data", str(data.SAMPLE_ROOT)])
    assert cli.config_for(args, args.parser).preset == "sample"
    assert "using the 'sample' preset" in capsys.readouterr().err
    args = parser.parse_args(["train", "--data", str(data.SAMPLE_ROOT), "--preset", "seed"])
    assert cli.config_for(args, args.parser).preset == "seed"


def test_plots_show_the_rate_chance_and_bar_values():
    plt = pytest.importorskip("matplotlib.pyplot")
    from minivit import plots
    metrics = [dict(epoch=e, lr=1e-3 / e, train_loss=2.0 / e, train_acc=0.2 * e, val_loss=2.1 / e,
                    val_acc=0.2 * e) for e in (1, 2, 3)]
    fig = plots.draw_curves(plt, metrics)
    loss, acc, rate = fig.axes
    assert rate.get_ylabel() == "learning rate"
    assert list(rate.lines[0].get_ydata()) == [m["lr"] for m in metrics]
    assert "chance" in [l.get_label() for l in acc.lines]
    plt.close(fig)
    y_true = np.arange(10).repeat(4)
    y_pred = y_true.copy()
    y_pred[::4] = 0
    fig = plots.draw_per_class(plt, y_true, y_pred)
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert labels == ["100%"] + ["75%"] * 9
    assert "chance" in [l.get_label() for l in fig.axes[0].lines]
    plt.close(fig)


def test_time_budget_curves_read_against_minutes_with_the_resolution_switch_marked():
    plt = pytest.importorskip("matplotlib.pyplot")
    from minivit import plots
    metrics = [dict(epoch=e, step=100 * e, lr=1e-3 / e, train_loss=2.0 / e, train_acc=0.2 * e,
                    val_loss=2.1 / e, val_acc=0.2 * e, train_seconds=s)
               for e, s in ((1, 30.0), (2, 60.0), (3, 180.0), (4, 300.0))]   # short epochs at 16px
    budget = dict(low_res=0.2, low_res_size=16, img_size=32, time_budget=300.0, epochs=50)
    fig = plots.draw_curves(plt, metrics, budget)
    for ax in fig.axes:
        assert ax.get_xlabel() == "minutes of training"
        assert list(ax.lines[0].get_xdata()) == [0.5, 1.0, 3.0, 5.0]
        switch = [l for l in ax.lines if l.get_label() == "16px -> 32px images"]
        assert len(switch) == 1 and list(switch[0].get_xdata()) == [1.0, 1.0]   # 20% of 5 minutes
        top = ax.child_axes[0]                                # the epochs, above
        assert top.get_xlabel() == "epoch" and 0 < max(top.get_xticks()) <= 4   # none past the last
    plt.close(fig)
    by_epochs = dict(budget, time_budget=0.0, epochs=4, low_res=0.5)          # switch at step 200
    fig = plots.draw_curves(plt, metrics, by_epochs)
    switch = [l for l in fig.axes[2].lines if l.get_label() == "16px -> 32px images"]
    assert list(switch[0].get_xdata()) == [1.0, 1.0]                          # step 200 = 60 s
    plt.close(fig)
    three = dict(budget, mid_res=0.4, mid_res_size=24)                        # 16px, 24px, 32px
    fig = plots.draw_curves(plt, metrics, three)
    marks = [(l.get_label(), round(l.get_xdata()[0], 9)) for l in fig.axes[0].lines if "px" in l.get_label()]
    assert marks == [("16px -> 24px images", 1.0), ("24px -> 32px images", 3.0)]   # 20%, 60% of 5 min
    plt.close(fig)


def test_attention_maps_go_beside_their_checkpoint(finished, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["attention", "--checkpoint", str(finished / "best.npz"), "--index", "1"]) == 0
    assert (finished / "attention-test1.png").exists()
    if ckpt.SHIPPED_MODEL.exists():
        assert cli.main(["attention", "--index", "1"]) == 0
        assert (tmp_path / "runs" / "shipped-model" / "attention-test1.png").exists()
    assert not list(tmp_path.glob("attention-*.png"))               # nothing in the current folder
