"""Every command that runs a model (train, eval, predict, attention) with --backend: NumPy,
and CuPy (the strict stand-in where there is no GPU). (gradcheck on each backend:
test_cli_gradcheck.py.)"""

from PIL import Image

from minivit import cli, data

from helpers import TINY_ARGS


def test_every_command_runs_on_each_backend(tmp_path, backend, capsys):
    out = tmp_path / "run"
    on = ["--backend", backend]
    assert cli.main(["train", "--epochs", "1", "--out", str(out), *on, *TINY_ARGS]) == 0
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
