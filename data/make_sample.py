"""Rebuild minivit/sample (the shipped CIFAR-10 sample) from a full cifar-10-batches-py folder.

    python data/make_sample.py PATH/TO/cifar-10-batches-py

Takes the first 200 training images of each class (in the official order, from
data_batch_1 onwards) and the first 50 test images of each class, and writes them in the
official layout: data_batch_1 (2,000 rows), test_batch (500 rows) and batches.meta.
"""

import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from minivit.data import TEST_FILE, TRAIN_FILES, read_batch, write_batch  # noqa: E402

PER_CLASS_TRAIN, PER_CLASS_TEST = 200, 50


def first_per_class(y, k):
    return np.sort(np.concatenate([np.flatnonzero(y == c)[:k] for c in range(10)]))


def main(src):
    src = Path(src)
    out = Path(__file__).resolve().parent.parent / "minivit" / "sample" / "cifar-10-batches-py"
    parts = [read_batch(src / f) for f in TRAIN_FILES]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    keep = first_per_class(y, PER_CLASS_TRAIN)
    write_batch(out / "data_batch_1", x[keep], y[keep], "sample training batch 1 of 1")
    xt, yt = read_batch(src / TEST_FILE)
    keep = first_per_class(yt, PER_CLASS_TEST)
    write_batch(out / TEST_FILE, xt[keep], yt[keep], "sample testing batch 1 of 1")
    shutil.copyfile(src / "batches.meta", out / "batches.meta")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1])
