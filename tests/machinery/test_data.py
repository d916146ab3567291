"""data.py: CIFAR-10 reading (the official layout and encoding, a restricted unpickler),
damaged files, the shipped sample, download, the validation split, normalization and the
Loader's batches. (Augmentation: test_augment.py, test_randaugment.py.)"""

import hashlib
import os
import pickle
import tarfile

import numpy as np
import pytest

import minivit
from minivit import data
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
    with pytest.raises(ValueError, match="does not exist: pass --data"):     # a DataError
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


def test_a_mistyped_data_variable_is_an_error_not_a_silent_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVIT_DATA", str(tmp_path / "typo"))
    with pytest.raises(DataError, match="MINIVIT_DATA=.*typo.*does not exist"):
        data.data_or_sample(None)
    monkeypatch.setenv("MINIVIT_DATA", "")
    assert data.data_or_sample(None)[1] in ("sample", "cifar10")
