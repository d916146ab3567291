"""CIFAR-10: finding, downloading and reading it, and batching it on the backend.

The files are the official ``cifar-10-batches-py`` layout: pickled dicts with ``data``
(uint8 [N, 3072], each row 1024 red, 1024 green, 1024 blue values of a 32x32 image) and
``labels`` (N ints). They are read with a restricted unpickler that admits only the few
NumPy names the format needs, so a file can never run code.

Batching happens on the backend: the whole split sits on the device as uint8
[N, 3, 32, 32]; each batch is gathered, normalized and augmented (random crop with
padding, horizontal flip) with whole-batch array operations, no per-image Python loop.
The random numbers come from a host NumPy generator, so NumPy and CuPy runs with the
same seed see the same batches; every draw is seeded from (seed, epoch, batch).
"""

import hashlib
import importlib
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from . import augment, seeds
from .engine.backend import array_module, kernel, to_device
from .errors import BadValue
from .files import atomic_write

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
# where the full data set is looked for when no folder is given, after $MINIVIT_DATA
DEFAULT_ROOT = Path.home() / ".cache" / "minivit"
# the small real sample shipped inside the package (see data/README.md), so that an
# installed minivit (pip install ., a wheel) trains out of the box too
SAMPLE_ROOT = Path(__file__).resolve().parent / "sample"
SAMPLE_FOLDER = SAMPLE_ROOT / FOLDER


class DataError(BadValue):
    """A data set folder or file is missing or damaged; the message says how to fix it."""


# ------------------------------------------------------------------- safe unpickling

_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"),
            ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
            ("_codecs", "encode")}   # how Python 3 writes bytes at pickle protocol 2


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits only the NumPy names a CIFAR-10 batch needs; anything else is refused."""

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a CIFAR-10 batch holds only NumPy arrays, "
                f"lists and strings, so this file is not one (and may be malicious)")
        if module == "_codecs":
            import codecs
            return codecs.encode
        for candidate in (module, module.replace("numpy._core", "numpy.core"),
                          module.replace("numpy.core", "numpy._core")):
            try:
                return getattr(importlib.import_module(candidate), name)
            except (ImportError, AttributeError):
                continue
        raise pickle.UnpicklingError(f"cannot resolve {module}.{name} in this NumPy")


def read_batch(path):
    """One batch file -> (images uint8 [N, 3, 32, 32], labels int64 [N])."""
    path = Path(path)
    fix = (f"replace it with the original file from the CIFAR-10 archive ({URL}), "
           f"or delete the folder and download again")
    try:
        with open(path, "rb") as f:
            d = _RestrictedUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"missing CIFAR-10 file {path}: {fix}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError,
            AttributeError, KeyError, MemoryError, OverflowError) as e:
        raise DataError(f"{path} is truncated or not a CIFAR-10 batch ({e}): {fix}") from None
    if not isinstance(d, dict):
        raise DataError(f"{path} is not a CIFAR-10 batch (a {type(d).__name__}, not a dict): {fix}")
    d = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise DataError(f"{path} has no 'data' or 'labels' entry: {fix}")
    data, labels = d["data"], np.asarray(d["labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' should be uint8 [N, 3072], got "
                        f"{getattr(data, 'dtype', type(data).__name__)} {np.shape(data)}: {fix}")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"{path}: 'labels' should be a list of integers: {fix}")
    if len(labels) < len(data):
        raise DataError(f"{path}: {len(data)} images but only {len(labels)} labels: {fix}")
    labels = labels[:len(data)].astype(np.int64)   # files cut short keep all labels first
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise DataError(f"{path}: labels must lie in 0..9, found {labels.min()}..{labels.max()}: {fix}")
    return data.reshape(-1, 3, 32, 32), labels


def write_batch(path, images, labels, batch_label="minivit"):
    """Write images uint8 [N, 3, 32, 32] and labels in the official batch format."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    d = {b"batch_label": batch_label.encode(), b"labels": [int(v) for v in labels],
         b"data": images.reshape(len(images), -1),
         b"filenames": [f"{batch_label}_{i:05d}.png".encode() for i in range(len(images))]}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: pickle.dump(d, f, protocol=4))


# ------------------------------------------------------------------ finding the data

def dataset_folder(root, need="train"):
    """The cifar-10-batches-py folder under root (root itself or root/cifar-10-batches-py)
    that holds what `need` asks for: "train" (any training batch) or "test" (test_batch);
    None if neither does."""
    root = Path(root).expanduser()
    files = TRAIN_FILES if need == "train" else (TEST_FILE,)
    for folder in (root, root / FOLDER):
        if any((folder / f).exists() for f in files):
            return folder
    return None


def _missing(data, need):
    what = (f"{FOLDER}/ with {', '.join(TRAIN_FILES)}" if need == "train"
            else f"{FOLDER}/ with {TEST_FILE}")
    if not Path(data).expanduser().exists():
        return DataError(f"data folder {data} does not exist: pass --data with a folder "
                         f"holding {what}, or leave --data out to use the sample shipped "
                         f"with minivit")
    return DataError(f"no CIFAR-10 in {data}: it should hold {what} (the official python "
                     f"archive, {URL}, unpacked)")


def find_cifar10(data=None, need="train"):
    """The full CIFAR-10 folder: ``data`` if given, else $MINIVIT_DATA when set, else the
    download location; None when none is given and the download location is empty.
    A folder that was named (--data or MINIVIT_DATA) but holds no CIFAR-10 is an error,
    never silently skipped."""
    if data is None and os.environ.get("MINIVIT_DATA"):
        data = os.environ["MINIVIT_DATA"]
        if dataset_folder(data, need) is None:
            state = "does not exist" if not Path(data).expanduser().exists() else "holds no CIFAR-10"
            raise DataError(f"MINIVIT_DATA={data} {state}: point it at a folder holding {FOLDER}/, "
                            f"or unset it to use the sample shipped with minivit")
    if data is not None:
        folder = dataset_folder(data, need)
        if folder is None:
            raise _missing(data, need)
        return folder
    return dataset_folder(DEFAULT_ROOT, need)


def is_sample(folder):
    """Whether folder is the sample shipped with minivit."""
    return Path(folder).resolve() == SAMPLE_FOLDER.resolve()


def data_or_sample(data=None, need="train", log=None):
    """-> (folder, source): the full CIFAR-10 as find_cifar10 finds it ("cifar10"), else the
    sample shipped with minivit ("sample"), saying so through log."""
    folder = find_cifar10(data, need)
    if folder is not None:
        return folder, "cifar10"
    if log is not None:
        log(f"Full CIFAR-10 not found: using the sample shipped with minivit ({SAMPLE_FOLDER}). "
            f"Pass --data DIR or set MINIVIT_DATA for the full data set.")
    return SAMPLE_FOLDER, "sample"


def load_cifar10(folder):
    """Read a cifar-10-batches-py folder -> dict with x_train, y_train, x_test, y_test
    (uint8 [N, 3, 32, 32] and int64 [N]). Training files may be fewer than five (the
    sample has one) and any file may hold fewer than 10,000 rows."""
    folder = Path(folder)
    train = [f for f in TRAIN_FILES if (folder / f).exists()]
    if not train:
        raise DataError(f"no training batches ({', '.join(TRAIN_FILES)}) in {folder}")
    parts = [read_batch(folder / f) for f in train]
    x_test, y_test = read_batch(folder / TEST_FILE)
    return {"x_train": np.concatenate([p[0] for p in parts]),
            "y_train": np.concatenate([p[1] for p in parts]),
            "x_test": x_test, "y_test": y_test}


def load_test(folder):
    """Only the test split of a folder -> (x_test, y_test): all that scoring needs."""
    return read_batch(Path(folder) / TEST_FILE)


def download_cifar10(root=DEFAULT_ROOT, url=URL, md5=MD5, progress=True):
    """Download and unpack the official archive into root/cifar-10-batches-py.

    Nothing is fetched when the folder is already there. The archive's md5 is checked
    before anything is unpacked, and unpacking goes to a temporary folder that is renamed
    into place, so an interrupted download never leaves a half data set."""
    root = Path(root).expanduser()
    if dataset_folder(root) is not None:
        return dataset_folder(root)
    root.mkdir(parents=True, exist_ok=True)
    archive = root / "cifar-10-python.tar.gz"
    if not archive.exists() or _md5(archive) != md5:
        try:
            _fetch(url, archive, progress)
        except OSError as e:
            raise DataError(
                f"could not download CIFAR-10 from {url} ({e}). With no network, fetch "
                f"cifar-10-python.tar.gz elsewhere and unpack it so that "
                f"{root / FOLDER} holds data_batch_1..5 and test_batch, or pass --data with "
                f"the folder that holds them") from None
    got = _md5(archive)
    if got != md5:
        archive.unlink()
        raise DataError(f"the downloaded archive's md5 is {got}, expected {md5}; it was "
                        f"deleted, try again")
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".extract-"))
    try:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith(FOLDER + "/")
                       and ".." not in m.name]
            tar.extractall(tmp, members=members)
        os.replace(tmp / FOLDER, root / FOLDER)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    archive.unlink()
    return root / FOLDER


def _md5(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch(url, dest, progress):
    part = dest.with_name(dest.name + ".part")
    with urllib.request.urlopen(url, timeout=30) as r, open(part, "wb") as f:
        total = int(r.headers.get("Content-Length") or 0)
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=total or None, unit="B", unit_scale=True, desc="CIFAR-10", file=sys.stderr)
        while True:
            chunk = r.read(1 << 20)
            if not chunk:
                break
            f.write(chunk)
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
    os.replace(part, dest)


# -------------------------------------------------------------- splits and batching

def split_validation(x, y, fraction, seed=0):
    """Carve a class-balanced validation split off the training set -> (x_tr, y_tr, x_val, y_val)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        val.append(rng.permutation(idx)[:int(round(len(idx) * fraction))])
    val = np.sort(np.concatenate(val)) if val else np.array([], dtype=np.int64)
    keep = np.setdiff1d(np.arange(len(y)), val)
    return x[keep], y[keep], x[val], y[val]


def channel_stats(x):
    """Per-channel mean and std of uint8 images [N, 3, H, W], on the 0..1 scale."""
    x = x.astype(np.float64) / 255.0
    return x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3))


@kernel
def scale_shift(xp, x, a, b):
    """x a + b, in the dtype of a and b (x may be uint8 pixels: normalizing)."""
    return x * a + b


def normalizer(mean, std, xp, dtype="float32", scale=1.0 / 255.0):
    """(a, b), each [1, C, 1, 1] on xp, with x a + b = (x scale - mean) / std."""
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    return (to_device((scale / std).reshape(1, -1, 1, 1), xp, dtype),
            to_device((-mean / std).reshape(1, -1, 1, 1), xp, dtype))


def normalize(images, mean, std, dtype="float32", scale=1.0 / 255.0):
    """uint8 [B, 3, H, W] on any backend -> (images/255 - mean) / std, as dtype.
    For float images already in [0, 1] pass scale=1."""
    return scale_shift(images, *normalizer(mean, std, array_module(images), dtype, scale))


class Loader:
    """Batches of one split, kept on the backend xp.

        loader = Loader(x, y, 128, xp, mean, std, shuffle=True, augment=True, seed=0)
        for images, labels in loader:      # one epoch; the next loop is the next epoch
            ...   # images: normalized float [B, 3, 32, 32] on xp, labels: int [B] on xp

    Augmentation: randaugment=(N, M) applies rand_augment (N operations per image at
    magnitude M) to the pixels, then augment=True a random crop (padding 4) and flip
    (alternate_flip=True: the flips alternate between epochs, augment.alternating_mirror).

    Randomness is counter-based (seeds.py): epoch e is shuffled by the "shuffle" stream of
    (seed, e) and batch i of it augmented by the streams of (seed, e, i). So any batch
    of any epoch can be rebuilt on its own, which is what lets a run interrupted in
    the middle of an epoch resume exactly (``batches(epoch, start)``).
    The last partial batch is kept unless drop_last is set.
    """

    def __init__(self, x, y, batch_size, xp, mean, std, *, shuffle=False, augment=False,
                 seed=0, dtype="float32", drop_last=False, randaugment=(0, 9.0),
                 alternate_flip=False):
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        self.x = to_device(x, xp)               # uint8 [N, 3, 32, 32] on the device
        self.y = to_device(y, xp)
        self.batch_size, self.xp, self.mean, self.std = batch_size, xp, mean, std
        self.shuffle, self.augment, self.seed, self.dtype = shuffle, augment, seed, dtype
        self.drop_last = drop_last
        self.randaugment = tuple(randaugment)   # (operations per image, magnitude); 0: off
        self.alternate_flip = alternate_flip    # augment's flips alternate (alternating_mirror)
        self.epoch = 0                          # epochs started by plain iteration
        self._normalize = {scale: normalizer(mean, std, xp, dtype, scale)      # on the device once
                           for scale in (1.0 / 255.0, 1.0)}

    def __len__(self):
        n = len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        self.epoch += 1
        return self.batches(self.epoch)

    def batches(self, epoch, start=0):
        """The batches (images, labels) of epoch (1-based) from batch index start on."""
        n = len(self.y)
        order = seeds.generator(self.seed, epoch, 0, "shuffle").permutation(n) if self.shuffle \
            else np.arange(n)
        mirror = augment.alternating_mirror(self.seed, epoch, n)[order] if self.alternate_flip \
            else None                                            # host bool [n], in batch order
        order = self.xp.asarray(order)
        num_ops, magnitude = self.randaugment
        for i in range(start, len(self)):
            rows = slice(i * self.batch_size, (i + 1) * self.batch_size)   # batch i of the order
            idx = order[rows]
            if num_ops:             # on [0, 1] pixels, before normalizing
                pixels = self.x[idx].astype(self.dtype) * (1.0 / 255.0)
                pixels = augment.rand_augment(pixels, seeds.generator(self.seed, epoch, i, "randaugment"),
                                              num_ops, magnitude)
                images = scale_shift(pixels, *self._normalize[1.0])
            else:
                images = scale_shift(self.x[idx], *self._normalize[1.0 / 255.0])
            if self.augment:
                images = augment.random_crop_flip(
                    images, seeds.generator(self.seed, epoch, i, "crop_flip"),
                    None if mirror is None else mirror[rows])
            yield images, self.y[idx]
