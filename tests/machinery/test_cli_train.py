"""`minivit train`: what a run writes and prints, its options (checked up front, with
argparse's exit status 2), --config, --init-from, the preset the data picks, and the
command that trained the shipped model. (Run folders: test_run_folder.py; --resume:
test_resume.py; --engine: test_engine_choice.py.)"""

import dataclasses
import json
import pathlib

import numpy as np
import pytest

from minivit import checkpoint as ckpt
from minivit import cli, data
from minivit.config import TrainConfig
from minivit.engine.config import ViTConfig
from minivit.engine.model import ViT

from helpers import TINY_ARGS, exit_status


def test_train_writes_checkpoints_metrics_and_plots(run_dir):
    for name in ("checkpoint.npz", "best.npz", "final.npz", "metrics.jsonl", "config.json", "summary.json",
                 "predictions.npz", "curves.png", "per_class.png", "predictions.png", "confusion.png"):
        assert (run_dir / name).exists(), name
    assert json.loads((run_dir / "config.json").read_text())["preset"] == "sample"
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_prints_progress_and_where_outputs_went(tmp_path, capsys):
    out = tmp_path / "r"
    assert cli.main(["train", "--epochs", "1", "--out", str(out), "--no-plots", *TINY_ARGS]) == 0
    text = capsys.readouterr().out
    assert "Full CIFAR-10 not found: using the sample shipped with minivit" in text
    assert f"Run folder: {out}" in text and "run by the fast path (checked against the engine)" in text
    assert "epoch   1  train loss" in text and f"Outputs in {out}/ (config.json, metrics.jsonl, checkpoint.npz, best.npz, final.npz, summary.json, predictions.npz)" in text
    assert "BLAS: " in text                  # which BLAS runs the fast path's products, and why


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "argument --epochs: must be a positive integer, got 0"),
    (["--batch-size", "-3"], "argument --batch-size: must be a positive integer, got -3"),
    (["--lr", "0"], "argument --lr: must be a positive number, got 0"),
    (["--preset", "fast"], "argument --preset: invalid choice: 'fast'"),
    (["--backend", "tpu"], "argument --backend: invalid choice: 'tpu'"),
    (["--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
    (["--engine", "torch"], "argument --engine: invalid choice: 'torch'"),
    (["--time-budget", "soon"], "argument --time-budget: expected a duration such as 30m, 90s or 1h, got 'soon'"),
    (["--embed-dim", "100", "--num-heads", "3"], "embed_dim 100 is not divisible by num_heads 3"),
    (["--resume"], "no --out RUN_DIR given and no run under runs/ holds a checkpoint.npz"),
    (["--drop-path", "1"], "argument --drop-path: must be in [0, 1), got 1"),
    (["--mixup", "-0.5"], "argument --mixup: must be a number >= 0, got -0.5"),
    (["--random-erase", "2"], "argument --random-erase: must be in [0, 1], got 2"),
    (["--randaugment", "-1"], "argument --randaugment: must be an integer >= 0, got -1"),
    (["--randaugment-magnitude", "11"], "argument --randaugment-magnitude: must be in [0, 10], got 11"),
])
def test_bad_options_fail_up_front(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)              # no runs/ here
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_config_repeats_a_run_with_overrides(run_dir, tmp_path):
    out = tmp_path / "again"
    assert exit_status(["train", "--config", str(run_dir / "config.json"), "--seed", "3",
                "--out", str(out), "--no-progress", "--no-plots"]) == 0
    first = json.loads((run_dir / "config.json").read_text())
    second = json.loads((out / "config.json").read_text())
    assert second["seed"] == 3
    assert {k: v for k, v in second.items() if k != "seed"} == {k: v for k, v in first.items() if k != "seed"}


def test_config_and_resume_errors_are_clear(tmp_path, capsys):
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert exit_status(["train", "--config", str(tmp_path / "bad.json")]) == 2
    assert "cannot read it as a run's config.json" in capsys.readouterr().err
    (tmp_path / "empty.json").write_text("{}")
    assert exit_status(["train", "--config", str(tmp_path / "empty.json")]) == 2
    assert "holds no training settings" in capsys.readouterr().err
    assert exit_status(["train", "--resume", "--init-from", "x.npz", "--out", str(tmp_path)]) == 2
    assert "give one or the other" in capsys.readouterr().err
    (tmp_path / "summary.json").write_text(json.dumps({"preset": "sample", "test_acc": 0.3, "epoch": 6}))
    assert exit_status(["train", "--config", str(tmp_path / "summary.json")]) == 2
    assert ("is not a run's config.json: it holds epoch, test_acc, which are not training settings"
            in capsys.readouterr().err)
    assert exit_status(["train", "--init-from", str(tmp_path / "nope.npz")]) == 2
    err = capsys.readouterr().err
    assert "point --init-from at a checkpoint.npz" in err and "--checkpoint" not in err


def test_epochs_with_a_time_budget_says_it_is_ignored(capsys):
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--preset", "sample", "--time-budget", "5m", "--epochs", "2"])
    cfg = cli.config_for(args, args.parser)
    assert cfg.time_budget == 300 and ("note: --epochs is ignored: this run has a time budget of 300 s "
                                       "(add --time-budget 0 to train by epochs)") in capsys.readouterr().err
    cli.config_for(parser.parse_args(["train", "--preset", "sample", "--epochs", "2"]), args.parser)
    assert "--epochs is ignored" not in capsys.readouterr().err


def test_init_from_starts_a_new_run_from_saved_weights(run_dir, tmp_path, capsys):
    # a tiny rate: the new run's weights stay where the checkpoint left them
    out = tmp_path / "more"
    assert cli.main(["train", "--init-from", str(run_dir / "checkpoint.npz"), "--lr", "1e-12",
                     "--weight-decay", "0", "--epochs", "1", "--out", str(out), "--batch-size", "32",
                     "--limit-train", "200", "--no-progress", "--no-plots"]) == 0
    assert f"Starting from the weights of {run_dir / 'checkpoint.npz'} (epoch 2)" in capsys.readouterr().out
    a, _, meta_a = ckpt.load(run_dir / "checkpoint.npz")
    b, _, meta_b = ckpt.load(out / "checkpoint.npz")
    assert meta_b["model"] == meta_a["model"]          # the shape came from the checkpoint
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6, err_msg=k)
    # a scratch run of the same shape moves far from them
    fresh = ViT(ViTConfig.from_dict(meta_a["model"]), seed=0).state_dict()
    assert max(float(np.abs(np.asarray(fresh[k]) - a[k]).max()) for k in a) > 1e-3


def test_init_from_refuses_a_model_that_does_not_fit(run_dir, capsys):
    assert exit_status(["train", "--init-from", str(run_dir / "checkpoint.npz"), "--embed-dim", "32",
                "--epochs", "1", *TINY_ARGS[2:]]) == 2
    assert "its model has embed_dim 16; drop --embed-dim" in capsys.readouterr().err


def test_data_pointing_at_the_shipped_sample_picks_the_sample_preset(capsys):
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--data", str(data.SAMPLE_ROOT)])
    assert cli.config_for(args, args.parser).preset == "sample"
    assert "using the 'sample' preset" in capsys.readouterr().err
    args = parser.parse_args(["train", "--data", str(data.SAMPLE_ROOT), "--preset", "seed"])
    assert cli.config_for(args, args.parser).preset == "seed"


def test_every_training_setting_is_an_option():
    """Each TrainConfig field (but the preset's own, the betas and what CIFAR-10 fixes) is a
    `minivit train` option of the same name; left out, it is None and the preset's value
    holds."""
    from minivit import options
    parser = options.build_parser()
    settable = {f.name for f in dataclasses.fields(TrainConfig)} - {
        "preset", "betas", "img_size", "in_chans", "num_classes"}
    args = vars(parser.parse_args(["train"]))
    assert settable <= set(args) and all(args[name] is None for name in settable)
    args = parser.parse_args(["train", "--norm", "rmsnorm", "--engine", "reference", "--time-budget", "90s"])
    cfg = cli.config_for(args, args.parser)
    assert (cfg.norm, cfg.engine, cfg.time_budget) == ("rmsnorm", "reference", 90.0)


def _train_command(text):
    """The options of the `minivit train ... --data DIR...` command quoted in a README's text."""
    line = next(line for line in text.splitlines() if "minivit train --preset hybrid" in line)
    words = line.split("minivit train", 1)[1].replace("`", " ").split()
    return words[:words.index("--data")]


def test_the_shipped_models_command_reproduces_its_config():
    """Both READMEs give the command that trained the shipped model: parsed as `minivit
    train` parses it, it asks for every setting of the model's config.json."""
    from minivit import options
    if not ckpt.SHIPPED_MODEL.exists():
        pytest.skip("no model ships with this copy")
    folder = ckpt.SHIPPED_MODEL.parent
    command = _train_command((folder / "README.md").read_text())
    readme = pathlib.Path(__file__).resolve().parents[2] / "README.md"
    assert _train_command(readme.read_text()) == command, "README.md and the model's README differ"
    parser = options.build_parser()
    args = parser.parse_args(["train", *command])
    config = json.loads(json.dumps(dataclasses.asdict(cli.config_for(args, parser))))  # as saved
    shipped = json.loads((folder / "config.json").read_text())
    differ = {k: (config.get(k), v) for k, v in shipped.items() if config.get(k) != v}
    assert not differ, f"{' '.join(command)} does not ask for the shipped settings: {differ}"


def test_an_option_error_is_the_error_and_where_the_options_are(capsys):
    """Not argparse's whole usage (30 lines for train) above the one line that matters."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--epochs", "-1"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == ("minivit train: error: argument --epochs: must be a positive "
                                       "integer, got -1\n(`minivit train --help` lists the options)\n")
    with pytest.raises(SystemExit):                 # the top-level parser's: both helps named
        cli.main(["train", "--bogus"])
    assert capsys.readouterr().err == ("minivit: error: unrecognized arguments: --bogus\n(`minivit "
                                       "--help` lists the commands, `minivit COMMAND --help` a "
                                       "command's options)\n")
