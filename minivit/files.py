"""Small file helpers: atomic writes and JSON / JSON-lines files.

Every file minivit writes goes through atomic_write, so it is either whole or absent:
a run killed at any moment never leaves half a checkpoint or half a line.
"""

import json
import os
import tempfile
from pathlib import Path


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
        os.chmod(tmp, 0o666 & ~_umask())         # as open() would make it, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path, obj):
    """Write obj as indented JSON, atomically."""
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def read_json(path):
    """The object in a JSON file."""
    return json.loads(Path(path).read_text())


def write_jsonl(path, records):
    """Write one JSON line per record, atomically: the file never holds half a line."""
    atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in records).encode()))


def read_jsonl(path):
    """The records of a JSON-lines file ([] when it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
