"""`minivit eval`: overall and per-class accuracy of a checkpoint, test-time views (--flip,
--crops), the test batch alone is read, and the model shipped with minivit used when no
checkpoint is given. (The views' arithmetic: test_evaluate.py.)"""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from minivit import checkpoint as ckpt
from minivit import cli, data
from minivit.data import DataError
from minivit.engine.backend import to_host
from minivit.engine.loss import cross_entropy
from minivit.engine.model import ViT


def test_eval_prints_overall_and_per_class_accuracy(run_dir, capsys, tmp_path):
    assert cli.main(["eval", "--checkpoint", str(run_dir / "best.npz"),
                     "--out", str(tmp_path / "eval.json")]) == 0
    text = capsys.readouterr().out
    assert "accuracy" in text and "airplane" in text and "truck" in text and "(50 images)" in text
    result = json.loads((tmp_path / "eval.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert result["accuracy"] == pytest.approx(summary["test_acc"])
    assert len(result["per_class_acc"]) == 10


def test_eval_with_flip_averaging_and_crops(capsys, backend, tmp_path):
    """eval --flip scores the mean of the model's logits on each test image and on its
    mirror image; --crops on six views (weighted as evaluate.tta_logits says, checked in
    test_evaluate.py); the two together are refused (a model with random weights, so that
    the views matter)."""
    model = ViT(embed_dim=16, depth=1, num_heads=2, mlp_ratio=2.0, seed=0)
    model.flat_params[...] = np.random.default_rng(0).normal(0.0, 1.0, model.flat_params.shape)
    meta = dict(mean=[0.49, 0.48, 0.45], std=[0.25, 0.24, 0.26], epoch=0, data_arg=None)
    ckpt.save(tmp_path / "random.npz", model, meta)
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


def test_eval_by_the_engine_gives_the_fast_paths_scores(run_dir, tmp_path, capsys):
    """--engine reference scores with the engine's ViT itself: the same accuracy."""
    scores = []
    for engine in ("fast", "reference"):
        out = tmp_path / f"{engine}.json"
        assert cli.main(["eval", "--checkpoint", str(run_dir / "best.npz"), "--engine", engine,
                         "--out", str(out)]) == 0
        scores.append(json.loads(out.read_text()))
    assert scores[0]["accuracy"] == scores[1]["accuracy"]
    assert scores[0]["loss"] == pytest.approx(scores[1]["loss"], rel=1e-5)


def test_scoring_needs_only_the_test_batch(tmp_path, capsys):
    """`minivit eval --data DIR` reads test_batch alone; training needs a training batch."""
    folder = tmp_path / "only-test" / data.FOLDER
    folder.mkdir(parents=True)
    for name in ("test_batch", "batches.meta"):
        shutil.copy(data.SAMPLE_FOLDER / name, folder / name)
    model = ViT(embed_dim=16, depth=1, num_heads=2)
    ckpt.save(tmp_path / "m.npz", model, {"mean": [0.5] * 3, "std": [0.25] * 3, "epoch": 0})
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "m.npz"), "--data", str(tmp_path / "only-test")]) == 0
    assert "500 test images" in capsys.readouterr().out
    with pytest.raises(DataError, match="no CIFAR-10 in .*data_batch_1"):
        data.find_cifar10(tmp_path / "only-test")


def test_eval_predict_and_attention_use_the_shipped_model_without_a_checkpoint(run_dir, tmp_path,
                                                                              capsys, monkeypatch):
    shipped = tmp_path / "pretrained" / "cifar10-hybrid-30min.npz"
    ckpt.export(run_dir / "best.npz", shipped)
    meta = ckpt.load(shipped)[2]
    assert meta["data_arg"] is None and "optimizer" not in meta        # nothing of this machine
    (shipped.parent / "summary.json").write_text(json.dumps(
        {"test_acc": 0.25, "test_images": 500, "train_seconds": 1800.0}))
    monkeypatch.setattr(ckpt, "SHIPPED_MODEL", shipped)
    assert cli.main(["eval"]) == 0
    out = capsys.readouterr().out
    assert "No --checkpoint given: using the model shipped with minivit" in out
    assert "25.0% on 500 CIFAR-10 test images after 30 minutes" in out and "accuracy" in out
    d = data.load_cifar10(data.SAMPLE_FOLDER)
    image = tmp_path / "img.png"
    Image.fromarray(d["x_test"][0].transpose(1, 2, 0)).save(image)
    assert cli.main(["predict", str(image)]) == 0
    assert cli.main(["attention", "--out", str(tmp_path / "a.png")]) == 0
    monkeypatch.setattr(ckpt, "SHIPPED_MODEL", tmp_path / "none.npz")
    with pytest.raises(SystemExit):
        cli.main(["eval"])
    assert "no --checkpoint given and no model ships" in capsys.readouterr().err


def test_the_shipped_model_is_a_trained_vit(capsys):
    """The committed model scores far above chance on the shipped sample's 500 test images."""
    if not ckpt.SHIPPED_MODEL.exists():
        pytest.skip("no model ships with this copy")
    assert cli.main(["eval"]) == 0
    out = capsys.readouterr().out
    assert "using the model shipped with minivit (cifar10-hybrid-30min.npz: 85.6% on 1017" in out
    accuracy = float(out.split("accuracy ")[1].split()[0])
    assert accuracy > 0.6, out
