"""One process at a time in a run folder, and what a failed write there leaves.

    train_locked(cfg, out="runs/try")    # what `minivit train` runs
    with run_lock("runs/try"):           # the lock alone
        ...

train_locked runs train() holding the run's lock, and says a failed write in one line.
The lock is flock() on the run folder itself. The operating system releases it when its
holder ends in any way (even kill -9), so a lock never outlives its process and no lock
file is left behind; a second process is refused, naming the holder's PID (read from
/proc/locks, on Linux). Holding the lock, run_lock removes the temporary files of writes
a killed process left. In an MPI job only rank 0, the rank that writes, takes it.
Where flock does not work (Windows, some network file systems) nothing is locked.

write_failed(error, folder) turns a WriteError of a run (a full disk, a read-only or
deleted folder) into one message: the file, the cause, the checkpoint still intact and
the command that goes on.
"""

import contextlib
import errno
import os
from pathlib import Path

from . import checkpoint as ckpt
from . import distributed
from .config import TrainConfig
from .errors import RunFailed
from .files import WriteError, read_json, remove_leftovers
from .train import train

try:
    import fcntl
except ImportError:                    # Windows
    fcntl = None


class RunInUse(RunFailed):
    """Another process holds the run folder."""


@contextlib.contextmanager
def run_lock(folder, world=None):
    """Hold folder for this process while the block runs; RunInUse if another holds it.
    world: the MPI world (only its rank 0 locks). A missing folder is not locked."""
    if fcntl is None or (world is not None and not world.main) or not os.path.isdir(folder):
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            remove_leftovers(folder)   # no other process writes here now
        except BlockingIOError:
            pid = holder(folder)
            by = f"process {pid}" if pid else "another process"
            raise RunInUse(f"{folder} is in use by {by} (another `minivit train` on this run): "
                           f"wait for it to end, or stop it, then continue with: minivit train "
                           f"--resume --out {folder}; or give this run another --out") from None
        except OSError:                # no flock here: go on unlocked
            pass
        yield
    finally:
        os.close(fd)                   # releases the lock


def holder(folder):
    """The PID of the process holding folder's flock, from /proc/locks (None if unknown)."""
    try:
        st = os.stat(folder)
        key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        with open("/proc/locks") as f:
            for line in f:
                # "1: FLOCK  ADVISORY  WRITE 4242 fe:00:2148290 0 EOF" ("->" marks a waiter)
                parts = line.split()
                if "->" not in parts and len(parts) > 5 and parts[1] == "FLOCK" and parts[5] == key:
                    return int(parts[4])
    except (OSError, ValueError):
        pass
    return None


def unsaved_run(folder):
    """For --resume of a run stopped before its first checkpoint (only config.json,
    metrics.jsonl or best.npz written): its configuration (a dict, from config.json),
    after removing those files so that it starts again; None for any other folder. Call
    it holding the run's lock."""
    folder = Path(folder)
    if (folder / "checkpoint.npz").exists() or not (folder / "config.json").is_file():
        return None
    cfg = read_json(folder / "config.json")
    for name in ("metrics.jsonl", "best.npz", "config.json"):
        (folder / name).unlink(missing_ok=True)
    return cfg


def write_failed(error, folder):
    """The message for a run whose write failed (a files.WriteError): the file and the
    cause, the last good checkpoint (atomic writes keep it whole) and how to go on."""
    if not os.path.isdir(folder):
        return f"{error}; nothing of the run is left to continue from: start it again"
    kept = [(p, m) for p, m in ckpt.intact(folder) if p.name == "checkpoint.npz"]
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some space on that disk"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = f"make {folder} writable again"
    else:
        fix = "fix that"
    if not kept:
        return (f"{error}; no checkpoint had been written yet: {fix}, then start the run again "
                f"(into a new or empty --out)")
    path, meta = kept[0]
    where = (f"epoch {meta.get('epoch')}" if not meta.get("in_epoch") else
             f"epoch {meta.get('epoch', 0) + 1}, batch {meta['in_epoch'].get('batch')}")
    return (f"{error}; the last good checkpoint {path} ({where}) is intact: "
            f"{fix}, then continue with: minivit train --resume --out {folder}")


def train_locked(cfg, out, resume=False, **kw):
    """train(), holding the run folder (a second process on it is refused); --resume of a
    run stopped before its first checkpoint starts it again; a failed write (a full disk,
    a read-only or deleted folder) ends with one line saying what is intact."""
    world = distributed.world()
    try:
        with run_lock(out, world):
            unsaved = world.share(unsaved_run(out) if resume and world.main else None)
            if unsaved is not None:
                cfg, resume = TrainConfig.from_dict(unsaved), False
                if world.main:
                    print(f"{out} holds no checkpoint yet (the run stopped before its first "
                          f"one): starting it again from its config.json")
            return train(cfg, out=out, resume=resume, **kw)
    except WriteError as e:
        raise RunFailed(write_failed(e, out)) from None
