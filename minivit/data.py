"""CIFAR-10: finding, downloading and reading it, and batching it on the backend.

The files are the official ``cifar-10-batches-py`` layout: pickled dicts with ``data``
(uint8 [N, 3072], each row 1024 red, 1024 green, 1024 blue values of a 32x32 image) and
``labels`` (N ints). They are read with a restricted unpickler that admits only the few
NumPy names the format needs, so a file can never run code.

Batching happens on the backend: the whole split sits on the device as uint8
[N, 3, 32, 32]; each batch is gathered, normalized and augmented (random crop with
padding, horizontal flip) with whole-batch array operations, no per-image Python loop.
The random numbers come from a host NumPy generator, so NumPy and CuPy runs with the
same seed see the same batches, and the generator's state goes into checkpoints.
"""

import hashlib
import importlib
import json
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from .backend import array_module, to_device

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
# where the full data set is looked for when no folder is given, after $MINIVIT_DATA
DEFAULT_ROOT = Path.home() / ".cache" / "minivit"
# the small real sample shipped with the project (see data/README.md)
SAMPLE_ROOT = Path(__file__).resolve().parent.parent / "data" / "cifar10-sample"


class DataError(Exception):
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
    atomic_write(path, lambda f: pickle.dump(d, f, protocol=4))


def atomic_write(path, write):
    """Write a file so that it is either complete or absent: write(f) fills a temporary
    file in the same folder, which is flushed, synced and renamed over path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path, obj):
    """Write obj as indented JSON, atomically."""
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def write_jsonl(path, records):
    """Write one JSON line per record, atomically: the file never holds half a line."""
    atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in records).encode()))


# ------------------------------------------------------------------ finding the data

def dataset_folder(root):
    """The cifar-10-batches-py folder for root (root itself or root/cifar-10-batches-py),
    or None if neither holds the training batches."""
    root = Path(root).expanduser()
    for folder in (root, root / FOLDER):
        if any((folder / f).exists() for f in TRAIN_FILES):
            return folder
    return None


def find_cifar10(data=None):
    """The folder to train on: ``data`` if given (an error if it holds no CIFAR-10),
    else $MINIVIT_DATA, else the download location; None if none is found."""
    if data is not None:
        folder = dataset_folder(data)
        if folder is None:
            if not Path(data).expanduser().exists():
                raise DataError(f"data folder {data} does not exist: pass --data with a folder "
                                f"holding {FOLDER}/ (or its files), or leave --data out to use "
                                f"the sample shipped with minivit")
            raise DataError(f"no CIFAR-10 in {data}: it should hold {FOLDER}/ with "
                            f"{', '.join(TRAIN_FILES)} and {TEST_FILE} (the official python "
                            f"archive, {URL}, unpacked)")
        return folder
    for root in (os.environ.get("MINIVIT_DATA"), DEFAULT_ROOT):
        if root and dataset_folder(root) is not None:
            return dataset_folder(root)
    return None


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
            "x_test": x_test, "y_test": y_test, "folder": str(folder)}


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


def normalize(images, mean, std, dtype="float32", scale=1.0 / 255.0):
    """uint8 [B, 3, H, W] on any backend -> (images/255 - mean) / std, as dtype.
    For float images already in [0, 1] pass scale=1."""
    xp = array_module(images)
    m = xp.asarray(mean, dtype=dtype).reshape(1, -1, 1, 1)
    s = xp.asarray(std, dtype=dtype).reshape(1, -1, 1, 1)
    return (images.astype(dtype) * scale - m) / s


def random_crop_flip(x, rng, padding=4, flip=True):
    """Augment a batch x [B, C, H, W] at once: pad every image by `padding` zeros, cut a
    random H x W window from each, and mirror about half of them left-right.
    Offsets and flips come from the host generator rng."""
    xp = array_module(x)
    B, C, H, W = x.shape
    if padding:
        padded = xp.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
        dy = xp.asarray(rng.integers(0, 2 * padding + 1, B))
        dx = xp.asarray(rng.integers(0, 2 * padding + 1, B))
        rows = (dy[:, None] + xp.arange(H))[:, None, :, None]        # [B, 1, H, 1]
        cols = (dx[:, None] + xp.arange(W))[:, None, None, :]        # [B, 1, 1, W]
        x = padded[xp.arange(B)[:, None, None, None], xp.arange(C)[None, :, None, None], rows, cols]
    if flip:
        mirror = xp.asarray(rng.random(B) < 0.5)[:, None, None, None]
        x = xp.where(mirror, x[..., ::-1], x)
    return x


def random_erase(x, rng, prob=0.25, area=(0.02, 1 / 3), aspect=(0.3, 3.3)):
    """Random erasing on a whole batch: with probability prob an image gets one random
    rectangle (area fraction and aspect ratio drawn from the ranges) set to 0, the data
    set's mean after normalization. Boxes come from the host generator rng."""
    xp = array_module(x)
    B, C, H, W = x.shape
    frac = rng.uniform(*area, B)
    ratio = np.exp(rng.uniform(np.log(aspect[0]), np.log(aspect[1]), B))
    h = np.clip(np.round(np.sqrt(frac * H * W * ratio)), 1, H).astype(np.int64)
    w = np.clip(np.round(np.sqrt(frac * H * W / ratio)), 1, W).astype(np.int64)
    y0 = (rng.random(B) * (H - h + 1)).astype(np.int64)
    x0 = (rng.random(B) * (W - w + 1)).astype(np.int64)
    erase = rng.random(B) < prob
    rows = np.arange(H)[None, :]
    cols = np.arange(W)[None, :]
    in_rows = (rows >= y0[:, None]) & (rows < (y0 + h)[:, None])            # [B, H]
    in_cols = (cols >= x0[:, None]) & (cols < (x0 + w)[:, None])            # [B, W]
    mask = in_rows[:, :, None] & in_cols[:, None, :] & erase[:, None, None]  # [B, H, W]
    return xp.where(xp.asarray(mask)[:, None], xp.zeros((), dtype=x.dtype), x)


# ------------------------------------------------------- RandAugment, on a whole batch
#
# RandAugment (Cubuk et al., 2020): every image gets `num_ops` operations in a row, each
# chosen uniformly from the list below and applied at a shared strength `magnitude`
# (0..10). Each operation is whole-batch array code on images in [0, 1]: the images that
# drew it are gathered, transformed together and put back. Geometric operations are one
# affine resampling (bilinear, the outside filled with mid-gray, as the reference
# implementation fills with 128).

def _blend(x, other, factor):
    """other + factor (x - other), clipped to [0, 1]: PIL's ImageEnhance. factor [B]."""
    xp = array_module(x)
    return xp.clip(other + factor[:, None, None, None] * (x - other), 0.0, 1.0)


def _gray(x):
    """ITU-R 601 luma [B, 1, H, W], PIL's convert('L')."""
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def affine(x, matrix, fill=0.5):
    """Resample every image of x [B, C, H, W] through its own 2x3 matrix [B, 2, 3]: output
    pixel (row, col) reads input (r, c) = matrix @ (row, col, 1), relative to the image
    centre, bilinearly; pixels read from outside the image are `fill`."""
    xp = array_module(x)
    B, C, H, W = x.shape
    rows, cols = xp.meshgrid(xp.arange(H, dtype=x.dtype) - (H - 1) / 2,
                             xp.arange(W, dtype=x.dtype) - (W - 1) / 2, indexing="ij")
    grid = xp.stack([rows.ravel(), cols.ravel(), xp.ones(H * W, dtype=x.dtype)])   # [3, HW]
    src = xp.asarray(matrix, dtype=x.dtype) @ grid                                # [B, 2, HW]
    r = src[:, 0] + (H - 1) / 2
    c = src[:, 1] + (W - 1) / 2
    r0, c0 = xp.floor(r), xp.floor(c)
    out = xp.zeros((B, C, H * W), dtype=x.dtype)
    flat = x.reshape(B, C, H * W)
    for dr in (0, 1):                     # the four neighbours, weighted bilinearly
        for dc in (0, 1):
            rr, cc = r0 + dr, c0 + dc
            weight = (1 - xp.abs(r - rr)) * (1 - xp.abs(c - cc))                 # [B, HW]
            inside = ((rr >= 0) & (rr <= H - 1) & (cc >= 0) & (cc <= W - 1)).astype(x.dtype)
            index = (xp.clip(rr, 0, H - 1) * W + xp.clip(cc, 0, W - 1)).astype(xp.int64)
            value = xp.take_along_axis(flat, index[:, None, :].repeat(C, axis=1), axis=2)
            out += (weight * inside)[:, None] * value                       # [B, C, HW]
            out += (weight * (1 - inside) * fill)[:, None]                  # outside: fill
    return out.reshape(B, C, H, W)


def _affine_op(kind):
    def op(x, m, sign):
        xp = array_module(x)
        B, _, H, _ = x.shape
        A = np.zeros((len(m), 2, 3))
        A[:, 0, 0] = A[:, 1, 1] = 1.0
        if kind == "rotate":                          # up to 30 degrees
            t = np.deg2rad(30.0 * m / 10 * sign)
            A[:, 0, 0], A[:, 0, 1], A[:, 1, 0], A[:, 1, 1] = np.cos(t), -np.sin(t), np.sin(t), np.cos(t)
        elif kind == "shear_x":                       # up to 0.3
            A[:, 1, 0] = 0.3 * m / 10 * sign
        elif kind == "shear_y":
            A[:, 0, 1] = 0.3 * m / 10 * sign
        elif kind == "translate_x":                   # up to 45% of the image
            A[:, 1, 2] = 0.45 * H * m / 10 * sign
        else:                                         # translate_y
            A[:, 0, 2] = 0.45 * H * m / 10 * sign
        return affine(x, xp.asarray(A))
    return op


def _enhance_op(kind):
    def op(x, m, sign):
        xp = array_module(x)
        factor = xp.asarray(1.0 + 0.9 * m / 10 * sign, dtype=x.dtype)   # 0.1 .. 1.9
        if kind == "brightness":
            other = xp.zeros_like(x)
        elif kind == "color":
            other = xp.broadcast_to(_gray(x), x.shape)
        elif kind == "contrast":
            other = xp.broadcast_to(_gray(x).mean(axis=(1, 2, 3), keepdims=True), x.shape)
        else:                                         # sharpness: PIL's 3x3 smoothing filter
            pad = xp.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
            H, W = x.shape[2:]
            other = sum(pad[:, :, i:i + H, j:j + W] for i in range(3) for j in range(3))
            other = (other + 4 * x) / 13.0
        return _blend(x, other, factor)
    return op


def _posterize(x, m, sign):
    """Keep 8 - bits of each 8-bit value, bits from 0 to 4."""
    xp = array_module(x)
    step = xp.asarray(2.0 ** np.floor(4 * m / 10), dtype=x.dtype)[:, None, None, None]
    return xp.floor(xp.round(x * 255) / step) * step / 255


def _solarize(x, m, sign):
    """Invert every value at or above a threshold (1 down to 0)."""
    xp = array_module(x)
    threshold = xp.asarray(1.0 - m / 10, dtype=x.dtype)[:, None, None, None]
    return xp.where(x >= threshold, 1.0 - x, x)


def _autocontrast(x, m, sign):
    """Stretch each channel's range to [0, 1] (channels with one value left alone)."""
    xp = array_module(x)
    lo = x.min(axis=(2, 3), keepdims=True)
    hi = x.max(axis=(2, 3), keepdims=True)
    span = hi - lo
    return xp.where(span > 0, (x - lo) / xp.where(span > 0, span, 1.0), x)


def _identity(x, m, sign):
    return x


RAND_AUGMENT_OPS = {
    "identity": _identity, "autocontrast": _autocontrast, "posterize": _posterize,
    "solarize": _solarize, "brightness": _enhance_op("brightness"),
    "color": _enhance_op("color"), "contrast": _enhance_op("contrast"),
    "sharpness": _enhance_op("sharpness"), "rotate": _affine_op("rotate"),
    "shear_x": _affine_op("shear_x"), "shear_y": _affine_op("shear_y"),
    "translate_x": _affine_op("translate_x"), "translate_y": _affine_op("translate_y"),
}


def rand_augment(x, rng, num_ops=2, magnitude=9.0, ops=None):
    """RandAugment on a batch of images in [0, 1], x [B, C, H, W] on any backend: each
    image gets num_ops operations from `ops` (default: every RAND_AUGMENT_OPS entry),
    drawn independently per image from the host generator rng, at strength
    magnitude (0..10); symmetric operations (rotate, shear, translate, the enhancements)
    take a random direction."""
    if not 0 <= magnitude <= 10:
        raise ValueError(f"RandAugment magnitude must be in [0, 10], got {magnitude}")
    names = list(RAND_AUGMENT_OPS) if ops is None else list(ops)
    unknown = [n for n in names if n not in RAND_AUGMENT_OPS]
    if unknown:
        raise ValueError(f"unknown RandAugment operations {unknown}: choose from "
                         f"{', '.join(RAND_AUGMENT_OPS)}")
    xp = array_module(x)
    B = len(x)
    x = x.copy()
    for _ in range(num_ops):
        choice = rng.integers(0, len(names), B)
        sign = np.where(rng.random(B) < 0.5, -1.0, 1.0)
        for k, name in enumerate(names):
            picked = np.nonzero(choice == k)[0]
            if len(picked) and name != "identity":
                idx = xp.asarray(picked)
                m = np.full(len(picked), float(magnitude))
                x[idx] = RAND_AUGMENT_OPS[name](x[idx], m, sign[picked]).astype(x.dtype, copy=False)
    return x


def mix_batch(x, labels, num_classes, rng, mixup_alpha=0.0, cutmix_alpha=0.0, switch_prob=0.5):
    """Mixup or CutMix on a whole batch -> (images, soft targets [B, num_classes]).

    Each image is paired with the image at a random permutation of the batch and
    lam ~ Beta(alpha, alpha). Mixup blends them: x = lam x + (1 - lam) x[perm]. CutMix
    pastes a box of the partner, covering about 1 - lam of the image (one box for the
    batch), and lam becomes the share left uncovered. The targets mix the same way:
    lam onehot(y) + (1 - lam) onehot(y[perm]). With both alphas set, CutMix is chosen
    with probability switch_prob."""
    xp = array_module(x)
    B, C, H, W = x.shape
    onehot = xp.eye(num_classes, dtype=x.dtype)[labels]                     # [B, K]
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < switch_prob)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    if alpha <= 0:
        return x, onehot
    lam = float(rng.beta(alpha, alpha))
    perm = xp.asarray(rng.permutation(B))
    if use_cutmix:
        cut = np.sqrt(1.0 - lam)
        h, w = int(H * cut), int(W * cut)
        cy, cx = int(rng.integers(H)), int(rng.integers(W))
        y0, y1 = max(cy - h // 2, 0), min(cy + h - h // 2, H)
        x0, x1 = max(cx - w // 2, 0), min(cx + w - w // 2, W)
        x = x.copy()
        x[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (H * W)
    else:
        x = lam * x + (1.0 - lam) * x[perm]
    return x, lam * onehot + (1.0 - lam) * onehot[perm]


class Loader:
    """Batches of one split, kept on the backend xp.

        loader = Loader(x, y, 128, xp, mean, std, shuffle=True, augment=True, seed=0)
        for images, labels in loader:      # one epoch; the next loop is the next epoch
            ...   # images: normalized float [B, 3, 32, 32] on xp, labels: int [B] on xp

    Augmentation: randaugment=(N, M) applies rand_augment (N operations per image at
    magnitude M) to the pixels, then augment=True a random crop (padding 4) and flip.

    Randomness is counter-based: epoch e is shuffled by a generator seeded with
    (seed, e) and batch i of it augmented by one seeded with (seed, e, i). So any batch
    of any epoch can be rebuilt on its own, which is what lets a run interrupted in
    the middle of an epoch resume exactly (``batches(epoch, start)``).
    The last partial batch is kept unless drop_last is set.
    """

    def __init__(self, x, y, batch_size, xp, mean, std, *, shuffle=False, augment=False,
                 seed=0, dtype="float32", drop_last=False, randaugment=(0, 9.0)):
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        self.x = to_device(x, xp)               # uint8 [N, 3, 32, 32] on the device
        self.y = to_device(y, xp)
        self.batch_size, self.xp, self.mean, self.std = batch_size, xp, mean, std
        self.shuffle, self.augment, self.seed, self.dtype = shuffle, augment, seed, dtype
        self.drop_last = drop_last
        self.randaugment = tuple(randaugment)   # (operations per image, magnitude); 0: off
        self.epoch = 0                          # epochs started by plain iteration

    def __len__(self):
        n = len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        self.epoch += 1
        return self.batches(self.epoch)

    def batches(self, epoch, start=0):
        """The batches of epoch (1-based) from batch index start on."""
        n = len(self.y)
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle \
            else np.arange(n)
        order = self.xp.asarray(order)
        for i in range(start, len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            num_ops, magnitude = self.randaugment
            if num_ops:             # on [0, 1] pixels, before normalizing; its own generator
                pixels = self.x[idx].astype(self.dtype) * (1.0 / 255.0)
                pixels = rand_augment(pixels, np.random.default_rng([self.seed, epoch, i, 1]),
                                      num_ops, magnitude)
                images = normalize(pixels, self.mean, self.std, self.dtype, scale=1.0)
            else:
                images = normalize(self.x[idx], self.mean, self.std, self.dtype)
            if self.augment:
                images = random_crop_flip(images, np.random.default_rng([self.seed, epoch, i]))
            yield images, self.y[idx]
