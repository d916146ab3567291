"""CIFAR-10 reading, safety, download, splits, batching and augmentation."""

import hashlib
import os
import pickle
import tarfile

import numpy as np
import pytest

import minivit
from minivit import augment, data
from minivit.data import DataError


def make_folder(root, n_train=(30, 20), n_test=15, seed=0):
    """A synthetic cifar-10-batches-py folder in the official layout."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    for i, n in enumerate(n_train, start=1):
        data.write_batch(folder / f"data_batch_{i}", rng.integers(0, 256, (n, 3, 32, 32)),
                         rng.integers(0, 10, n))
    data.write_batch(folder / "test_batch", rng.integers(0, 256, (n_test, 3, 32, 32)),
                     rng.integers(0, 10, n_test))
    return folder


def test_reads_a_folder_in_the_official_layout(tmp_path):
    folder = make_folder(tmp_path)
    d = data.load_cifar10(data.find_cifar10(tmp_path))       # the parent folder works too
    assert d["x_train"].shape == (50, 3, 32, 32) and d["x_train"].dtype == np.uint8
    assert d["y_train"].shape == (50,) and d["x_test"].shape == (15, 3, 32, 32)
    x, y = data.read_batch(folder / "data_batch_1")
    np.testing.assert_array_equal(d["x_train"][:30], x)


def test_reads_the_official_encoding(tmp_path):
    """Files as the original archive writes them: protocol 2, bytes keys, extra entries."""
    rng = np.random.default_rng(1)
    raw = {b"batch_label": b"training batch 1 of 5", b"labels": [3, 1, 4],
           b"data": rng.integers(0, 256, (3, 3072)).astype(np.uint8),
           b"filenames": [b"a.png", b"b.png", b"c.png"]}
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(raw, protocol=2))
    x, y = data.read_batch(path)
    assert x.shape == (3, 3, 32, 32) and list(y) == [3, 1, 4]
    np.testing.assert_array_equal(x[1, 2].ravel(), raw[b"data"][1, 2048:])   # blue plane


def test_shipped_sample():
    d = data.load_cifar10(data.dataset_folder(data.SAMPLE_ROOT))
    assert d["x_train"].shape == (2000, 3, 32, 32) and d["x_test"].shape == (500, 3, 32, 32)
    assert np.bincount(d["y_train"]).tolist() == [200] * 10
    assert np.bincount(d["y_test"]).tolist() == [50] * 10
    mean, std = data.channel_stats(d["x_train"])
    assert np.all(np.abs(mean - [0.49, 0.48, 0.45]) < 0.03)   # real CIFAR-10 statistics


def test_channel_stats_are_each_channels_mean_and_std_on_the_0_1_scale():
    x = np.zeros((4, 3, 2, 2), np.uint8)
    x[:2, 0] = 255                       # channel 0: half the pixels 1, half 0
    x[:, 1] = 51                         # channel 1: every pixel 0.2
    x[:, 2, :, 0] = 102                  # channel 2: half 0.4, half 0
    mean, std = data.channel_stats(x)
    np.testing.assert_allclose(mean, [0.5, 0.2, 0.2], rtol=1e-12)
    np.testing.assert_allclose(std, [0.5, 0.0, 0.2], rtol=1e-12, atol=1e-15)   # population std
    sample = data.load_cifar10(data.SAMPLE_FOLDER)["x_train"]
    mean, std = data.channel_stats(sample)
    assert np.all(np.abs(std - [0.247, 0.243, 0.261]) < 0.02)      # real CIFAR-10 statistics


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[:5000]), "is truncated or not a CIFAR-10 batch"),
    (lambda p: p.write_text("hello, I am not a pickle"), "is truncated or not a CIFAR-10 batch"),
    (lambda p: p.write_bytes(pickle.dumps([1, 2, 3])), "is not a CIFAR-10 batch (a list, not a dict)"),
    (lambda p: p.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})),
     "'data' should be uint8 [N, 3072], got uint8 (2, 100)"),
    (lambda p: p.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]})),
     "labels must lie in 0..9, found 0..12"),
    (lambda p: p.unlink(), "missing CIFAR-10 file"),
])
def test_damaged_files_name_the_file_and_the_fix(tmp_path, damage, message):
    folder = make_folder(tmp_path)
    damage(folder / "test_batch")
    with pytest.raises(DataError) as err:
        data.load_cifar10(folder)
    assert message in str(err.value)
    assert str(folder / "test_batch") in str(err.value)
    assert "cifar-10-python.tar.gz" in str(err.value)   # the fix: the original file


class Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}, protocol=2))
    with pytest.raises(DataError, match=r"refusing to load (posix|os|nt)\.system"):
        data.read_batch(path)
    assert not (tmp_path / "PWNED").exists()


def test_missing_or_empty_data_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist: pass --data"):
        data.find_cifar10(tmp_path / "nope")
    with pytest.raises(DataError, match="no CIFAR-10 in"):
        data.find_cifar10(tmp_path)


def test_environment_variable_points_at_the_data(tmp_path, monkeypatch):
    make_folder(tmp_path)
    monkeypatch.setenv("MINIVIT_DATA", str(tmp_path))
    assert data.find_cifar10() == tmp_path / "cifar-10-batches-py"


def _archive(tmp_path):
    src = make_folder(tmp_path / "src")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def test_download_verifies_extracts_and_does_not_repeat(tmp_path):
    archive, md5 = _archive(tmp_path)
    root = tmp_path / "cache"
    folder = data.download_cifar10(root, url=archive.as_uri(), md5=md5, progress=False)
    assert folder == root / "cifar-10-batches-py"
    assert data.load_cifar10(folder)["x_train"].shape == (50, 3, 32, 32)
    assert not list(root.glob(".extract-*")) and not (root / "cifar-10-python.tar.gz").exists()
    archive.unlink()   # present already: nothing is fetched again
    assert data.download_cifar10(root, url=archive.as_uri(), md5=md5, progress=False) == folder


def test_download_rejects_a_bad_checksum(tmp_path):
    archive, _ = _archive(tmp_path)
    root = tmp_path / "cache"
    with pytest.raises(DataError, match="md5 is .*, expected 0+; it was deleted"):
        data.download_cifar10(root, url=archive.as_uri(), md5="0" * 32, progress=False)
    assert data.dataset_folder(root) is None


def test_download_without_network_says_where_to_put_the_files(tmp_path):
    with pytest.raises(DataError) as err:
        data.download_cifar10(tmp_path, url=(tmp_path / "absent.tar.gz").as_uri(), progress=False)
    assert "With no network" in str(err.value) and "cifar-10-batches-py" in str(err.value)


def test_validation_split_is_balanced_and_disjoint():
    y = np.repeat(np.arange(10), 20)
    x = np.arange(200)
    x_tr, y_tr, x_val, y_val = data.split_validation(x, y, 0.1, seed=3)
    assert np.bincount(y_val).tolist() == [2] * 10 and len(x_tr) == 180
    assert not set(x_tr) & set(x_val)


def test_random_crop_is_a_shifted_window_and_flip_mirrors(backend):
    rng_x = np.random.default_rng(0)
    x = rng_x.standard_normal((16, 3, 8, 8))
    xp = minivit.get_xp(backend)
    out = minivit.to_host(augment.random_crop_flip(xp.asarray(x), np.random.default_rng(5)))
    rng = np.random.default_rng(5)   # the same draws, in the same order
    dy, dx = rng.integers(0, 9, 16), rng.integers(0, 9, 16)           # padding 4
    flips = rng.random(16) < 0.5
    padded = np.pad(x, ((0, 0), (0, 0), (4, 4), (4, 4)))
    for i in range(16):
        ref = padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8]
        np.testing.assert_array_equal(out[i], ref[..., ::-1] if flips[i] else ref)
    assert 0 < flips.sum() < 16 and (dy != 4).any()


def test_alternating_flip_shows_every_image_both_ways_in_two_epochs(backend):
    """airbench's alternating flip: epoch 1 mirrors a random half, epoch 2 the other half,
    epoch 3 the first half again; the crops stay random."""
    n, side = 64, 8
    x = np.broadcast_to(10 + np.arange(side, dtype=np.uint8), (n, 3, side, side)).copy()  # a ramp
    xp = minivit.get_xp(backend)

    def mirrored(loader, epoch):          # image index -> mirrored in this epoch?
        out = {}
        for images, labels in loader.batches(epoch):
            row = minivit.to_host(images)[:, 0].sum(axis=1)                     # [B, W]
            for r, label in zip(row, minivit.to_host(labels)):
                ramp = r[r > 0]                                                  # the crop's zeros out
                out[int(label)] = bool(ramp[0] > ramp[-1])
        return np.array([out[i] for i in range(n)])

    alternate = data.Loader(x, np.arange(n), 16, xp, [0] * 3, [1 / 255] * 3, shuffle=True,
                            augment=True, seed=4, alternate_flip=True)
    first, second, third = (mirrored(alternate, e) for e in (1, 2, 3))
    assert 0.3 < first.mean() < 0.7
    np.testing.assert_array_equal(second, ~first)
    np.testing.assert_array_equal(third, first)
    np.testing.assert_array_equal(first, augment.alternating_mirror(4, 1, n))
    random = data.Loader(x, np.arange(n), 16, xp, [0] * 3, [1 / 255] * 3, shuffle=True,
                         augment=True, seed=4)
    assert not np.array_equal(mirrored(random, 2), ~mirrored(random, 1))   # random flips don't


def test_loader_batches_cover_the_split_once(backend):
    from minivit import get_xp, to_host
    xp = get_xp(backend)
    x = np.arange(50, dtype=np.uint8)[:, None, None, None] * np.ones((1, 3, 4, 4), np.uint8)
    y = np.arange(50) % 10
    loader = data.Loader(x, y, 16, xp, [0, 0, 0], [1 / 255] * 3, shuffle=True, seed=0)
    seen = []
    for images, labels in loader:
        images = to_host(images)
        assert images.dtype == np.float32
        seen.extend(images[:, 0, 0, 0].astype(int).tolist())
        np.testing.assert_array_equal(to_host(labels), np.array(seen[-len(labels):]) % 10)
    assert len(loader) == 4 and sorted(seen) == list(range(50)) and seen != list(range(50))


def test_normalize_uses_the_channel_statistics():
    x = np.full((2, 3, 2, 2), 255, np.uint8)
    out = data.normalize(x, [0.5, 0.5, 0.5], [0.25, 0.5, 1.0])
    np.testing.assert_allclose(out[0, :, 0, 0], [2.0, 1.0, 0.5], rtol=1e-6)


def test_loader_batches_can_be_rebuilt_alone(backend):
    x = np.random.default_rng(0).integers(0, 256, (40, 3, 8, 8)).astype(np.uint8)
    loader = data.Loader(x, np.arange(40) % 10, 8, minivit.get_xp(backend), [0.5] * 3,
                         [0.25] * 3, shuffle=True, augment=True, seed=3)

    def host(batches):
        return [(minivit.to_host(a), minivit.to_host(b)) for a, b in batches]
    first, second = host(loader), host(loader)            # epochs 1 and 2
    assert not np.array_equal(first[0][1], second[0][1])  # a new order each epoch
    tail = host(loader.batches(2, start=3))               # epoch 2 from batch 3, rebuilt
    for (a, la), (b, lb) in zip(second[3:], tail):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)


def test_random_streams_are_separate_and_repeatable():
    from minivit import seeds
    draws = {s: seeds.generator(3, 2, 5, s).random(8) for s in seeds.STREAMS}
    for a in seeds.STREAMS:
        for b in seeds.STREAMS:
            if a != b:
                assert not np.allclose(draws[a], draws[b]), (a, b)
        np.testing.assert_array_equal(draws[a], seeds.generator(3, 2, 5, a).random(8))
    assert not np.allclose(draws["mix"], seeds.generator(3, 2, 6, "mix").random(8))   # next batch
    assert not np.allclose(draws["mix"], seeds.generator(3, 3, 5, "mix").random(8))   # next epoch
    with pytest.raises(ValueError, match="unknown random stream 'dropout'"):
        seeds.generator(0, 1, 0, "dropout")


def test_training_draws_no_two_regularizers_from_one_seed(monkeypatch, tmp_path):
    """Every generator the training loop and the loader make is a named stream of its own."""
    from minivit import seeds, train as train_module
    from minivit.config import TrainConfig
    made = []
    real = seeds.generator
    monkeypatch.setattr(seeds, "generator", lambda *key: made.append(key) or real(*key))
    cfg = TrainConfig.from_preset("sample", epochs=1, embed_dim=16, depth=2, num_heads=2,
                                  batch_size=32, limit_train=100, drop_path=0.2, random_erase=0.5,
                                  mixup=0.8, randaugment=1, alternate_flip=True)
    train_module.train(cfg, out=tmp_path / "run", progress=False, plots=False, log=lambda *a: None)
    streams = {key[3] for key in made}
    assert streams == set(seeds.STREAMS)
    assert len(made) == len(set(made))                  # no key used twice


def test_scoring_needs_only_the_test_batch(tmp_path, capsys):
    """`minivit eval --data DIR` reads test_batch alone; training needs a training batch."""
    import shutil
    from minivit import checkpoint as ckpt, cli
    folder = tmp_path / "only-test" / data.FOLDER
    folder.mkdir(parents=True)
    for name in ("test_batch", "batches.meta"):
        shutil.copy(data.SAMPLE_FOLDER / name, folder / name)
    model = minivit.ViT(embed_dim=16, depth=1, num_heads=2)
    ckpt.save(tmp_path / "m.npz", model, {"mean": [0.5] * 3, "std": [0.25] * 3, "epoch": 0})
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "m.npz"), "--data", str(tmp_path / "only-test")]) == 0
    assert "500 test images" in capsys.readouterr().out
    with pytest.raises(DataError, match="no CIFAR-10 in .*data_batch_1"):
        data.find_cifar10(tmp_path / "only-test")


def test_a_mistyped_data_variable_is_an_error_not_a_silent_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVIT_DATA", str(tmp_path / "typo"))
    with pytest.raises(DataError, match="MINIVIT_DATA=.*typo.*does not exist"):
        data.data_or_sample(None)
    monkeypatch.setenv("MINIVIT_DATA", "")
    assert data.data_or_sample(None)[1] in ("sample", "cifar10")


def test_the_sample_and_the_trained_model_travel_inside_the_package(tmp_path):
    """A wheel (what `pip install .` installs) holds the shipped sample and the shipped
    model, so an installed minivit trains and evaluates from any folder."""
    import subprocess
    import sys
    import zipfile
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    import shutil
    src = tmp_path / "src"                  # a copy, so the build leaves the checkout alone
    shutil.copytree(root, src, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "build", "dist",
                                                             "*.egg-info", "__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path),
                           str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    wheel = next(tmp_path.glob("minivit-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("data_batch_1", "test_batch", "batches.meta"):
        assert f"minivit/sample/cifar-10-batches-py/{f}" in names
    shipped = os.path.join(root, "minivit", "pretrained")
    for f in os.listdir(shipped) if os.path.isdir(shipped) else []:
        assert f"minivit/pretrained/{f}" in names, f
