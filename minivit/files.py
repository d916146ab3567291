"""Small file helpers: atomic writes and JSON / JSON-lines files.

Every file minivit writes goes through atomic_write, so it is either whole or absent:
a run killed at any moment never leaves half a checkpoint or half a line. A write that
fails (a full disk, a read-only or vanished folder) raises WriteError, which names the
file, the cause and, for a full disk, the space the file needs.
"""

import errno
import io
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from .errors import RunFailed

TMP_SUFFIX = ".tmp"             # atomic_write's temporary files: .NAME.XXXXXXXX.tmp


class WriteError(RunFailed):
    """A file could not be written; the file that was there before is untouched.
    path: the file; errno: the cause (errno.ENOSPC for a full disk); needed: its size."""

    def __init__(self, path, error, needed=None):
        self.path, self.errno, self.needed = Path(path), error.errno, needed
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            free = _free_bytes(self.path.parent)
            need = f"it needs {format_bytes(needed)}" if needed is not None else ""
            have = f"{format_bytes(free)} free" if free is not None else ""
            space = ", ".join(s for s in (need, have) if s)
            reason = "no space left on device" + (f" ({space})" if space else "")
        elif error.errno == errno.ENOENT and not self.path.parent.is_dir():
            reason = f"its folder {self.path.parent} no longer exists (deleted or moved)"
        else:
            reason = (error.strerror or str(error)).lower()
        super().__init__(f"cannot write {self.path}: {reason}")


def atomic_write(path, write):
    """Write a file so that it is either complete or absent: write(f) fills a buffer, which
    goes to a temporary file in the same folder (which must exist), is flushed, synced and
    renamed over path. An OSError becomes WriteError; a partial temporary file is removed."""
    path = Path(path)
    buf = io.BytesIO()
    write(buf)
    data = buf.getbuffer()
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())         # as open() would make it, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise WriteError(path, e, needed=len(data)) from None
        raise


def remove_leftovers(folder):
    """Delete the temporary files of atomic writes cut short by a killed process (call it
    only while no other process writes into folder) -> their names."""
    gone = []
    for p in Path(folder).glob(f".*{TMP_SUFFIX}"):
        try:
            p.unlink()
            gone.append(p.name)
        except OSError:
            pass
    return gone


def write_json(path, obj):
    """Write obj as indented JSON, atomically."""
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def read_json(path):
    """The object in a JSON file."""
    return json.loads(Path(path).read_text())


def write_jsonl(path, records):
    """Write one JSON line per record, atomically: the file never holds half a line."""
    atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in records).encode()))


def read_jsonl(path, log=None):
    """The records of a JSON-lines file ([] when it does not exist). A last line cut short
    (a process stopped while appending it) is left out, saying so through log (default: a
    warning); any other line that is not JSON raises RunFailed naming file and line."""
    path = Path(path)
    if not path.exists():
        return []
    lines = [(n, line) for n, line in enumerate(
        path.read_bytes().decode(errors="replace").split("\n"), 1) if line.strip()]
    records = []
    for n, line in lines:
        try:
            records.append(json.loads(line))
        except ValueError as e:
            if n != lines[-1][0]:
                raise RunFailed(f"{path}: line {n} is not a JSON record ({e}); the file is "
                                   f"damaged: delete that line (or restore the file) and try "
                                   f"again") from None
            note = (f"{path}: its last line (line {n}) was cut short, as by a process stopped "
                    f"while writing it; read the {len(records)} whole lines before it")
            if log is None:
                warnings.warn(note, stacklevel=2)
            else:
                log(note)
    return records


def format_bytes(n):
    """1536 -> '1.5 kB', as df -h would say it (powers of 1000)."""
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000


def _free_bytes(folder):
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
