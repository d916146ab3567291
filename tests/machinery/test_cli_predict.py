"""`minivit predict`: the top classes of image files, and a file that is no image."""

import json

from PIL import Image

from minivit import cli, data


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
    assert cli.main(["predict", "--checkpoint", str(run_dir / "best.npz"), str(tmp_path / "absent.png")]) == 2
    assert f"image {tmp_path / 'absent.png'} does not exist" in capsys.readouterr().err
