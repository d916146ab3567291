"""The minivit command: train, eval, predict, plot, download, and its error messages."""

import dataclasses
import json
import pathlib

import pytest
from PIL import Image

from minivit import cli, data
from minivit.engine import gradcheck
from minivit.errors import MinivitError

TINY = ["--embed-dim", "16", "--depth", "1", "--num-heads", "2", "--mlp-ratio", "2",
        "--batch-size", "32", "--limit-train", "200", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert cli.main(["train", "--epochs", "2", "--out", str(out), *TINY]) == 0
    return out


def test_train_writes_checkpoints_metrics_and_plots(run_dir):
    for name in ("checkpoint.npz", "best.npz", "metrics.jsonl", "config.json", "summary.json",
                 "predictions.npz", "curves.png", "per_class.png", "predictions.png", "confusion.png"):
        assert (run_dir / name).exists(), name
    assert json.loads((run_dir / "config.json").read_text())["preset"] == "sample"
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_prints_progress_and_where_outputs_went(tmp_path, capsys):
    out = tmp_path / "r"
    cli.main(["train", "--epochs", "1", "--out", str(out), "--no-plots", *TINY])
    text = capsys.readouterr().out
    assert "Full CIFAR-10 not found: using the sample shipped with minivit" in text
    assert "epoch   1  train loss" in text and f"Outputs in {out}" in text


def test_eval_prints_overall_and_per_class_accuracy(run_dir, capsys, tmp_path):
    assert cli.main(["eval", "--checkpoint", str(run_dir / "best.npz"),
                     "--out", str(tmp_path / "eval.json")]) == 0
    text = capsys.readouterr().out
    assert "accuracy" in text and "airplane" in text and "truck" in text and "(50 images)" in text
    result = json.loads((tmp_path / "eval.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert result["accuracy"] == pytest.approx(summary["test_acc"])
    assert len(result["per_class_acc"]) == 10


def test_predict_prints_top3(run_dir, tmp_path, capsys):
    d = data.load_cifar10(data.dataset_folder(data.SAMPLE_ROOT))
    paths = []
    for i, ext in enumerate(["png", "jpg"]):
        path = tmp_path / f"img{i}.{ext}"
        Image.fromarray(d["x_test"][i].transpose(1, 2, 0)).resize((64, 48)).save(path)
        paths.append(str(path))
    assert cli.main(["predict", "--checkpoint", str(run_dir / "best.npz"), *paths,
                     "--out", str(tmp_path / "p.json")]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith(str(tmp_path / "img"))]
    assert len(lines) == 2 and all(l.count(",") == 2 for l in lines)
    result = json.loads((tmp_path / "p.json").read_text())
    probs = [t["prob"] for t in result[0]["top"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6


def test_predict_unreadable_image(run_dir, tmp_path, capsys):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    assert cli.main(["predict", "--checkpoint", str(run_dir / "best.npz"), str(bad)]) == 2
    assert f"cannot read image {bad}" in capsys.readouterr().err


def test_plot_command_and_missing_matplotlib(run_dir, capsys, monkeypatch, tmp_path):
    assert cli.main(["plot", str(run_dir)]) == 0
    assert "confusion.png" in capsys.readouterr().out
    assert cli.main(["plot", str(run_dir), "--out", str(tmp_path / "figs")]) == 0
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == [
        "confusion.png", "curves.png", "per_class.png", "predictions.png"]
    from minivit import plots
    monkeypatch.setattr(plots, "_pyplot", lambda: None)
    assert cli.main(["plot", str(run_dir)]) == 1                   # nothing drawn: not a success
    assert "matplotlib is not installed" in capsys.readouterr().out


def test_resume_from_the_command_line(tmp_path, capsys):
    from minivit.config import TrainConfig
    from minivit.train import train
    out = tmp_path / "run"
    cfg = TrainConfig.from_preset("sample", epochs=2, embed_dim=16, depth=1, num_heads=2,
                                  mlp_ratio=2.0, batch_size=32, limit_train=200)
    train(cfg, out=out, progress=False, plots=False, log=lambda *a: None, stop_after_epochs=1)
    assert not (out / "summary.json").exists()
    assert cli.main(["train", "--resume", "--out", str(out), "--no-progress", "--no-plots"]) == 0
    text = capsys.readouterr().out
    assert "Resuming" in text and "epoch   2" in text and "epoch   1" not in text
    assert (out / "summary.json").exists()
    assert cli.main(["train", "--out", str(out), "--no-plots", *TINY]) == 2   # never overwritten
    assert "already holds a run" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["train", "--epochs", "0"], "argument --epochs: must be a positive integer, got 0"),
    (["train", "--batch-size", "-3"], "argument --batch-size: must be a positive integer, got -3"),
    (["train", "--lr", "0"], "argument --lr: must be a positive number, got 0"),
    (["train", "--preset", "fast"], "argument --preset: invalid choice: 'fast'"),
    (["train", "--backend", "tpu"], "argument --backend: invalid choice: 'tpu'"),
    (["train", "--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
    (["train", "--embed-dim", "100", "--num-heads", "3"], "embed_dim 100 is not divisible by num_heads 3"),
    (["train", "--resume"], "no --out RUN_DIR given and no run under runs/ holds a checkpoint.npz"),
])
def test_bad_options_fail_up_front(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)              # no runs/ here
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit):
        cli.main(["train", "--out", str(blocker / "run")])
    assert "minivit train: error: --out" in capsys.readouterr().err


def test_missing_data_and_checkpoint_errors(tmp_path, capsys):
    assert cli.main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 2
    assert "does not exist: pass --data" in capsys.readouterr().err
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "none.npz")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_bug_keeps_its_traceback_and_minivit_errors_are_one_line(tmp_path, capsys, monkeypatch):
    """A ValueError from code of one's own (here a broken linear layer) is not turned into
    a one-line message: it propagates with its traceback. minivit's own errors are one line
    and exit 2, unless --debug (or MINIVIT_DEBUG=1) asks for the traceback."""
    from minivit.engine import layers

    def broken_linear(x, w, b):
        return x.reshape(-1, 7), None           # a student's reshape gone wrong
    monkeypatch.setattr(layers, "linear_forward", broken_linear)
    with pytest.raises(ValueError, match="cannot reshape"):
        cli.main(["gradcheck", "--layer", "linear"])
    monkeypatch.undo()

    missing = ["eval", "--checkpoint", str(tmp_path / "none.npz")]
    assert cli.main(missing) == 2
    err = capsys.readouterr().err
    assert err.startswith("minivit eval: error: checkpoint") and len(err.splitlines()) == 1
    with pytest.raises(MinivitError, match="does not exist"):
        cli.main(missing + ["--debug"])
    monkeypatch.setenv("MINIVIT_DEBUG", "1")
    with pytest.raises(MinivitError, match="does not exist"):
        cli.main(missing)


def test_every_command_runs_on_each_backend(tmp_path, backend, capsys):
    """train, eval, predict, attention and gradcheck with --backend (the CuPy stand-in
    where there is no GPU)."""
    out = tmp_path / "run"
    on = ["--backend", backend]
    assert cli.main(["train", "--epochs", "1", "--out", str(out), *on, *TINY]) == 0
    assert f"on {backend}" in capsys.readouterr().out
    ckpt = str(out / "best.npz")
    assert cli.main(["eval", "--checkpoint", ckpt, *on]) == 0
    assert "accuracy" in capsys.readouterr().out
    d = data.load_cifar10(data.SAMPLE_FOLDER)
    image = tmp_path / "img.png"
    Image.fromarray(d["x_test"][0].transpose(1, 2, 0)).save(image)
    assert cli.main(["predict", "--checkpoint", ckpt, str(image), *on]) == 0
    assert capsys.readouterr().out.count(",") == 2
    assert cli.main(["attention", "--checkpoint", ckpt, "--index", "1", "--out",
                     str(tmp_path / "att.png"), *on]) == 0
    assert (tmp_path / "att.png").read_bytes()[:4] == b"\x89PNG"
    assert cli.main(["gradcheck", "--layer", "attention", *on]) == 0
    assert cli.main(["gradcheck", "--model", "--max-checks", "3", *on]) == 0
    models = 2 * len(gradcheck.MODELS) + 1             # reference and fast, then the blocked GELU
    assert capsys.readouterr().out.strip().endswith(f"{models} passed, 0 failed")


def test_selftest_on_numpy_says_why_the_gpu_side_was_skipped(capsys, monkeypatch):
    from minivit.engine import backend
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_cupy_error", "CuPy is not installed (test).")
    assert cli.main(["selftest", "--backend", "auto"]) == 0
    out = capsys.readouterr().out
    assert "GPU side skipped: CuPy is not installed (test)." in out
    assert "pass  gradcheck attention" in out and "pass  gradcheck fast path" in out
    assert "step time: default ViT, batch 80" in out and " 0 failed" in out


def test_selftest_on_the_cupy_stand_in_compares_with_numpy(cupy_strict_module, capsys):
    assert cli.main(["selftest", "--backend", "cupy"]) == 0
    out = capsys.readouterr().out
    assert "cupy:" in out and "FAIL" not in out
    for line in ("pass  3 float64 training steps = NumPy's",
                 "pass  3 float32 steps = NumPy's (AdamW, EMA, clipping, drop path)",
                 "pass  3 float32 steps = NumPy's (conv stem)",
                 "pass  3 float32 steps = NumPy's (low-resolution batch)",
                 "pass  3 float32 steps = NumPy's (Muon)",
                 "pass  loader, augmentation and regularizers = NumPy's",
                 "(it compiles the GPU kernels), then"):
        assert line in out, line
    assert out.strip().splitlines()[-1] == "verdict: every check passed on numpy and cupy"


def test_selftest_ends_with_a_verdict_when_a_gpu_check_raises(cupy_strict_module, capsys, monkeypatch):
    from minivit import selftest

    def broken(backend):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    monkeypatch.setattr(selftest, "_batches", broken)
    monkeypatch.setattr(selftest, "_step_times", lambda backend: (1.0, 0.5))
    monkeypatch.setattr(selftest.gradcheck, "LAYERS", {})          # keep the test short
    assert cli.main(["selftest", "--backend", "cupy"]) == 1
    out = capsys.readouterr().out
    assert ("FAIL  loader, augmentation and regularizers = NumPy's: raised RuntimeError: CUDA error: "
            "an illegal memory access was encountered") in out
    assert out.strip().splitlines()[-1].startswith("verdict: FAILED on cupy: cupy loader")


def test_selftest_fails_loudly(monkeypatch, capsys):
    from minivit.engine import layers
    real = layers.softmax_backward
    monkeypatch.setattr(layers, "softmax_backward", lambda da, c: real(da, c) * 1.01)
    assert cli.main(["selftest", "--backend", "numpy"]) == 1
    assert "FAIL  gradcheck softmax" in capsys.readouterr().out


def _train_command(text):
    """The options of the `minivit train ... --data DIR...` command quoted in a README's text."""
    line = next(line for line in text.splitlines() if "minivit train --preset hybrid" in line)
    words = line.split("minivit train", 1)[1].replace("`", " ").split()
    return words[:words.index("--data")]


def test_the_shipped_models_command_reproduces_its_config():
    """Both READMEs give the command that trained the shipped model: parsed as `minivit
    train` parses it, it asks for every setting of the model's config.json."""
    from minivit import checkpoint, options
    if not checkpoint.SHIPPED_MODEL.exists():
        pytest.skip("no model ships with this copy")
    folder = checkpoint.SHIPPED_MODEL.parent
    command = _train_command((folder / "README.md").read_text())
    readme = pathlib.Path(__file__).resolve().parents[1] / "README.md"
    assert _train_command(readme.read_text()) == command, "README.md and the model's README differ"
    parser = options.build_parser()
    args = parser.parse_args(["train", *command])
    config = json.loads(json.dumps(dataclasses.asdict(cli.config_for(args, parser))))  # as saved
    shipped = json.loads((folder / "config.json").read_text())
    differ = {k: (config.get(k), v) for k, v in shipped.items() if config.get(k) != v}
    assert not differ, f"{' '.join(command)} does not ask for the shipped settings: {differ}"


def test_eval_predict_and_attention_use_the_shipped_model_without_a_checkpoint(run_dir, tmp_path,
                                                                              capsys, monkeypatch):
    from minivit import checkpoint
    shipped = tmp_path / "pretrained" / "cifar10-hybrid-30min.npz"
    checkpoint.export(run_dir / "best.npz", shipped)
    meta = checkpoint.load(shipped)[2]
    assert meta["data_arg"] is None and "optimizer" not in meta        # nothing of this machine
    (shipped.parent / "summary.json").write_text(json.dumps(
        {"test_acc": 0.25, "test_images": 500, "train_seconds": 1800.0}))
    monkeypatch.setattr(checkpoint, "SHIPPED_MODEL", shipped)
    assert cli.main(["eval"]) == 0
    out = capsys.readouterr().out
    assert "No --checkpoint given: using the model shipped with minivit" in out
    assert "25.0% on 500 CIFAR-10 test images after 30 minutes" in out and "accuracy" in out
    d = data.load_cifar10(data.SAMPLE_FOLDER)
    image = tmp_path / "img.png"
    Image.fromarray(d["x_test"][0].transpose(1, 2, 0)).save(image)
    assert cli.main(["predict", str(image)]) == 0
    assert cli.main(["attention", "--out", str(tmp_path / "a.png")]) == 0
    monkeypatch.setattr(checkpoint, "SHIPPED_MODEL", tmp_path / "none.npz")
    with pytest.raises(SystemExit):
        cli.main(["eval"])
    assert "no --checkpoint given and no model ships" in capsys.readouterr().err


def test_eval_with_flip_averaging_and_crops(capsys, backend, tmp_path):
    """eval --flip scores the mean of the model's logits on each test image and on its
    mirror image; --crops on six views (weighted as evaluate.tta_logits says, checked in
    test_train); the two together are refused (a model with random weights, so that the
    views matter)."""
    import numpy as np
    from minivit import ViT, checkpoint, cross_entropy, to_host
    model = ViT(embed_dim=16, depth=1, num_heads=2, mlp_ratio=2.0, seed=0)
    model.flat_params[...] = np.random.default_rng(0).normal(0.0, 1.0, model.flat_params.shape)
    meta = dict(mean=[0.49, 0.48, 0.45], std=[0.25, 0.24, 0.26], epoch=0, data_arg=None)
    checkpoint.save(tmp_path / "random.npz", model, meta)
    scores = {}
    for views in ("one", "flip", "crops"):
        out = tmp_path / f"eval-{views}.json"
        assert cli.main(["eval", "--checkpoint", str(tmp_path / "random.npz"), "--backend", backend,
                         "--out", str(out)] + ([] if views == "one" else [f"--{views}"])) == 0
        scores[views] = json.loads(out.read_text())
        assert scores[views]["views"] == views
    printed = capsys.readouterr().out
    assert "(with flipped copies)" in printed and "(six views: shifted and flipped copies)" in printed
    x_test, y_test = data.load_test(data.SAMPLE_FOLDER)
    images = data.normalize(x_test, meta["mean"], meta["std"])
    logits = 0.5 * (to_host(model.forward(images)) + to_host(model.forward(images[..., ::-1])))
    assert scores["flip"]["loss"] == pytest.approx(float(cross_entropy(logits, y_test)[0]), rel=1e-4)
    assert scores["flip"]["accuracy"] == pytest.approx(float((logits.argmax(axis=1) == y_test).mean()), abs=0.005)
    assert abs(scores["flip"]["loss"] - scores["one"]["loss"]) > 1e-2     # mirroring matters here
    assert abs(scores["crops"]["loss"] - scores["flip"]["loss"]) > 1e-3   # and so do the shifts
    with pytest.raises(SystemExit):
        cli.main(["eval", "--checkpoint", str(tmp_path / "random.npz"), "--flip", "--crops"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_version_broken_pipe_plot_exit_code_and_file_modes(run_dir, tmp_path, capsys, monkeypatch):
    import os
    import stat
    from minivit import __version__, plots
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and f"minivit {__version__}" in capsys.readouterr().out
    mode = stat.S_IMODE(os.stat(run_dir / "checkpoint.npz").st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask                       # not 0600
    monkeypatch.setattr(plots, "_pyplot", lambda: None)
    assert cli.main(["plot", str(run_dir)]) == 1        # nothing drawn is not a success

    def broken(*args, **kwargs):
        raise BrokenPipeError
    monkeypatch.setattr(cli, "cmd_eval", broken)
    monkeypatch.setitem(cli.COMMANDS, "eval", broken)
    assert cli.main(["eval", "--checkpoint", str(run_dir / "best.npz")]) == 0


def test_the_shipped_model_is_a_trained_vit(capsys):
    """The committed model scores far above chance on the shipped sample's 500 test images."""
    from minivit import checkpoint
    if not checkpoint.SHIPPED_MODEL.exists():
        pytest.skip("no model ships with this copy")
    assert cli.main(["eval"]) == 0
    out = capsys.readouterr().out
    assert "using the model shipped with minivit (cifar10-hybrid-30min.npz: 83.7% on 1017" in out
    accuracy = float(out.split("accuracy ")[1].split()[0])
    assert accuracy > 0.6, out
