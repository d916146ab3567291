"""Fault injection: the faults a long run meets, and what they leave behind.

    python benchmarks/fault_injection.py                # about two minutes on 2 cores
    python benchmarks/fault_injection.py --kills 100    # more kill points

A tiny run on the shipped sample (3 epochs of 4 steps) meets:
- a full disk (ENOSPC) at every write it makes, one run per write: config.json,
  metrics.jsonl, best.npz, checkpoint.npz, final.npz, summary.json, predictions.npz and
  the plots. Each must end with one clear line and exit status 1, with every file that
  was there before the failed write still whole; then `--resume` on the still full disk
  must say the same, and `--resume` after space is freed must end with the weights of an
  uninterrupted run, bit for bit.
- kill -9 at seeded moments (training steps, validation, and every stage of a save:
  temporary file written, before the rename, after it), each followed by `--resume`,
  until the run ends: its weights must equal an uninterrupted run's bit for bit, and
  after every kill every file in the run folder must be whole.
It prints the figures recorded in benchmarks/RESULTS.md (their table: archive/RESULTS-log.md,
Reliability): faults injected, runs
resumed, files lost or damaged (the goal: 0). tests/machinery/test_kill.py and test_disk_full.py run the same
machinery, on fewer kill points, plus CuPy, MPI, signals and lock cases.

The faults are injected from outside minivit's code: a run in a child process
(`python -c CHILD train ...`) wraps FastRunner.forward/backward (not counting those of
the fast path's check against the engine before training, which writes nothing),
os.fsync and os.replace, and at its FAULT_AT-th such event sends itself FAULT_SIGNALS
(default KILL); a disk-full run patches os.fsync in this process to raise ENOSPC at its
N-th write.
"""

import argparse
import contextlib
import errno
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
sys.path.insert(0, str(ROOT))

from minivit import checkpoint as ckpt  # noqa: E402
from minivit import cli  # noqa: E402
from minivit.data import SAMPLE_FOLDER  # noqa: E402

# 80 images of the shipped sample: 72 to train (4 steps of 16), 8 to validate; 3 epochs;
# the sample's 500 test images scored at the end
ARGS = ["--preset", "sample", "--data", str(SAMPLE_FOLDER), "--epochs", "3", "--embed-dim", "8", "--depth", "1", "--num-heads", "2", "--mlp-ratio", "2",
        "--batch-size", "16", "--limit-train", "80", "--eval-batch-size", "250", "--no-progress"]

# A run of `minivit` in a child process that sends itself FAULT_SIGNALS (names, default KILL;
# ENOSPC: a full disk at that write instead) at its FAULT_AT-th event: a forward pass
# (training step or evaluation; the fast path's check against the engine is not counted),
# a backward pass, a temporary file written (before fsync),
# a rename before and after it. FAULT_RANK: only that MPI rank counts. FAULT_LOG=1: print
# every event. FAULT_CUPY_STRICT=1: the strict CuPy stand-in is installed as CuPy.
CHILD = r"""
import errno, os, signal, sys
from minivit import cli, distributed, fast
if os.environ.get("FAULT_CUPY_STRICT"):
    import cupy_strict
    class Setter:
        setattr = staticmethod(setattr)
    cupy_strict.install(Setter)
at = int(os.environ.get("FAULT_AT", "0"))
if os.environ.get("FAULT_RANK") and distributed.world().rank != int(os.environ["FAULT_RANK"]):
    at = 0
signals = os.environ.get("FAULT_SIGNALS", "KILL").split(",")
count = 0
def event(kind):
    global count
    count += 1
    if os.environ.get("FAULT_LOG"):
        print(f"event {count}: {kind}", file=sys.stderr, flush=True)
    if count == at:
        print(f"fault: event {count}: {kind}", file=sys.stderr, flush=True)
        for s in signals:
            if s == "ENOSPC":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.kill(os.getpid(), getattr(signal, "SIG" + s))
def name_of(fd):
    try:
        return os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))[1:].rsplit(".", 2)[0]
    except OSError:
        return "a file"
real_forward, real_backward = fast.FastRunner.forward, fast.FastRunner.backward
checking = False
def forward(self, x, keep_cache=True, **kw):
    if not checking:
        event("step: forward" if keep_cache else "evaluation: forward")
    return real_forward(self, x, keep_cache, **kw)
def backward(self, *a, **kw):
    if not checking:
        event("step: backward")
    return real_backward(self, *a, **kw)
fast.FastRunner.forward, fast.FastRunner.backward = forward, backward
real_check = fast.check_against_engine
def check_against_engine(*a, **kw):
    global checking
    checking = True
    try:
        return real_check(*a, **kw)
    finally:
        checking = False
fast.check_against_engine = check_against_engine
real_fsync, real_replace = os.fsync, os.replace
def fsync(fd):
    event("save: temporary file written, " + name_of(fd))
    return real_fsync(fd)
def replace(src, dst, **kw):
    event("save: before the rename, " + os.path.basename(dst))
    real_replace(src, dst, **kw)
    event("save: after the rename, " + os.path.basename(dst))
os.fsync, os.replace = fsync, replace
code = cli.main(sys.argv[1:])
print(f"fault events: {count}", file=sys.stderr, flush=True)
sys.exit(code)
"""


def child_env(**extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]), MINIVIT_DATA="")
    env.pop("MINIVIT_BACKEND", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_child(args, timeout=300, mpirun=None, **fault):
    """`minivit train ARGS` in a child process (under `mpirun -n 2` when given), with the
    fault settings (FAULT_AT=..., ...) -> CompletedProcess."""
    cmd = [sys.executable, "-c", CHILD, "train", *args]
    if mpirun:
        cmd = [mpirun, "-n", "2", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, env=child_env(**fault), cwd=ROOT,
                          timeout=timeout, start_new_session=True)


def events_of(proc):
    """The number of fault events a child counted (it prints it when it ends normally)."""
    line = [s for s in proc.stderr.splitlines() if s.startswith("fault events: ")][-1]
    return int(line.split(": ")[1])


def event_log(proc):
    """The events a child run with FAULT_LOG=1 met, in order: ['save: ..., config.json', ...]."""
    return [s.split(": ", 1)[1] for s in proc.stderr.splitlines() if s.startswith("event ")]


def fault_of(proc):
    """The event a child sent itself its signals at ('step: backward', ...), or None."""
    said = [s for s in proc.stderr.splitlines() if s.startswith("fault: event ")]
    return said[-1].split(": ", 2)[2] if said else None


# ---------------------------------------------------------------- what a run folder holds

def damaged_files(folder):
    """The files of a run folder that are not whole -> [(name, why)]. The temporary files of
    a killed write (.NAME.XXXX.tmp) are not the run's files and are left out."""
    from PIL import Image
    bad = []
    for p in sorted(Path(folder).iterdir()) if Path(folder).is_dir() else []:
        if p.name.endswith(".tmp"):
            continue
        try:
            if p.name in ckpt.RUN_CHECKPOINTS:
                ckpt.load(p)
            elif p.suffix == ".npz":
                with np.load(p, allow_pickle=False) as f:
                    [f[k] for k in f.files]
            elif p.suffix == ".json":
                json.loads(p.read_text())
            elif p.suffix == ".jsonl":
                text = p.read_text()
                assert text.endswith("\n"), "its last line is cut"
                [json.loads(line) for line in text.splitlines()]
            elif p.suffix == ".png":
                with Image.open(p) as im:
                    im.load()
        except Exception as e:       # anything unreadable is damaged
            bad.append((p.name, f"{type(e).__name__}: {e}"))
    return bad


def leftovers(folder):
    return sorted(p.name for p in Path(folder).glob(".*.tmp"))


TIMINGS = ("epoch_seconds", "images_per_second", "train_seconds")


def differences(a, b):
    """Where two finished run folders differ: every array of checkpoint.npz (weights,
    optimizer moments), final.npz and best.npz bit for bit, the metrics (timings aside)
    and the test accuracy -> a list of what differs."""
    found = []
    for name in ckpt.RUN_CHECKPOINTS:
        wa, oa, _ = ckpt.load(Path(a) / name)
        wb, ob, _ = ckpt.load(Path(b) / name)
        for k in set(wa) | set(oa) | set(wb) | set(ob):
            x, y = wa.get(k, oa.get(k)), wb.get(k, ob.get(k))
            if x is None or y is None or x.shape != y.shape or x.tobytes() != y.tobytes():
                found.append(f"{name}: {k}")
    metrics = [[{k: v for k, v in json.loads(line).items() if k not in TIMINGS}
                for line in (Path(f) / "metrics.jsonl").read_text().splitlines()] for f in (a, b)]
    if metrics[0] != metrics[1]:
        found.append("metrics.jsonl")
    if json.loads((Path(a) / "summary.json").read_text())["test_acc"] != \
            json.loads((Path(b) / "summary.json").read_text())["test_acc"]:
        found.append("summary.json: test_acc")
    return found


# -------------------------------------------------------------------------- kill -9

def kill_chain(out, rng, kills, span, args=ARGS, mpirun=None, **fault):
    """Start a run in out and kill it at a seeded event (1..span of the child's own
    events), then --resume and kill again, `kills` times or until the run ends; then
    --resume to the end. (A run killed before it wrote config.json is started again with
    the same command, as its message says.) After each kill every file must be whole -> dict(kills: the events
    killed at, resumes: --resume processes, starts: processes that started the run anew,
    damaged: [(file, why)], code: the last exit status, stderr)."""
    done = dict(kills=[], resumes=0, starts=0, damaged=[])
    start = [*args, "--out", str(out)]
    resume = ["--resume", "--out", str(out), "--no-progress", *(["--no-plots"] if "--no-plots" in args else []),
              *(args[args.index("--backend"):][:2] if "--backend" in args else [])]
    proc = None
    while len(done["kills"]) < kills:
        at = int(rng.integers(1, span + 1))
        started = (out / "config.json").exists() or (out / "checkpoint.npz").exists()
        proc = run_child(resume if started else start, mpirun=mpirun, FAULT_AT=at, **fault)
        done["resumes" if started else "starts"] += 1
        if proc.returncode == 0:                 # it ended before event `at`
            break
        if fault_of(proc) is None:
            raise RuntimeError(f"the run failed by itself (exit {proc.returncode}):\n{proc.stderr}")
        done["kills"].append(fault_of(proc))
        done["damaged"] += damaged_files(out)
    else:
        started = (out / "config.json").exists() or (out / "checkpoint.npz").exists()
        proc = run_child(resume if started else start, mpirun=mpirun, **fault)
        done["resumes" if started else "starts"] += 1
    done.update(code=proc.returncode, stderr=proc.stderr)
    done["damaged"] += damaged_files(out) + [(name, "left over") for name in leftovers(out)]
    return done


# ------------------------------------------------------------------------ disk full

@contextlib.contextmanager
def disk_full_at(n, folder, log):
    """Within the block, the n-th atomic write (counted at its fsync) fails with ENOSPC,
    as on a full disk. log: a list that gets, per write, (file name, the run folder's
    files and their bytes just before that write)."""
    real_fsync, real_mkstemp = os.fsync, tempfile.mkstemp
    names = []

    def mkstemp(*a, **kw):
        fd, path = real_mkstemp(*a, **kw)
        names.append(os.path.basename(path)[1:].rsplit(".", 2)[0])   # .NAME.XXXX.tmp
        return fd, path

    def fsync(fd):
        log.append((names[-1], {p.name: p.read_bytes() for p in Path(folder).iterdir()
                                if p.is_file() and not p.name.endswith(".tmp")}))
        if len(log) == n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    os.fsync, tempfile.mkstemp = fsync, mkstemp
    try:
        yield
    finally:
        os.fsync, tempfile.mkstemp = real_fsync, real_mkstemp


def run_main(argv):
    """cli.main in this process -> (exit status, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    return code, err.getvalue()


def disk_full_sweep(folder, straight, points=None):
    """For each write of a run (or the given write numbers): a new run whose n-th write
    meets a full disk, then --resume on the still full disk, then --resume after space
    is freed -> a list of dicts (n, file, code, message, lost: files that were there before
    the failed write and are no longer whole, resumed: the final --resume's exit status,
    differs: how the finished run differs from the uninterrupted one)."""
    folder = Path(folder)
    count = []
    with disk_full_at(0, straight, count):
        code, err = run_main(["train", *ARGS, "--out", str(straight)])
    assert code == 0, err
    results = []
    for n in points or range(1, len(count) + 1):
        out = folder / f"full-at-{n}"
        log = []
        with disk_full_at(n, out, log):
            code, err = run_main(["train", *ARGS, "--out", str(out)])
        name, before = log[n - 1] if len(log) >= n else (None, {})
        lost = [k for k, v in before.items() if not (out / k).exists() or (out / k).read_bytes() != v]
        r = dict(n=n, file=name, code=code, message=err.strip(), lost=lost + leftovers(out),
                 damaged=damaged_files(out), resumed=None, differs=None)
        if "--resume" in err:                   # a checkpoint is there to go on from
            with disk_full_at(1, out, []):
                r["code_still_full"], r["message_still_full"] = run_main(["train", "--resume", "--out", str(out)])
            r["resumed"], _ = run_main(["train", "--resume", "--out", str(out), "--no-plots"])
            r["differs"] = differences(straight, out)
        results.append(r)
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=30, help="kill -9 points (default 30)")
    ap.add_argument("--writes", type=int, default=None,
                    help="a full disk at only the first WRITES writes (default: at every one)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sweep = disk_full_sweep(tmp / "sweep", tmp / "straight",
                                points=range(1, args.writes + 1) if args.writes else None)
        clear = [r for r in sweep if r["code"] == 1 and r["message"].count("\n") == 0
                 and "cannot write" in r["message"]]
        print(f"full disk: {len(sweep)} writes failed ({', '.join(sorted({r['file'] for r in sweep}))}); "
              f"{len(clear)} ended with one clear line and exit status 1; "
              f"{sum(r['resumed'] == 0 for r in sweep)} resumed to the end, "
              f"{sum(bool(r['differs']) for r in sweep if r['resumed'] == 0)} of them differing; "
              f"files lost or damaged: {sum(len(r['lost']) + len(r['damaged']) for r in sweep)}")

        straight = run_child([*ARGS, "--no-plots", "--out", str(tmp / "straight-kill")])
        assert straight.returncode == 0, straight.stderr
        rng = np.random.default_rng(args.seed)
        kills, resumes, damaged, differ, chains, restarts = [], 0, [], 0, 0, 0
        while len(kills) < args.kills:
            out = tmp / f"chain-{chains}"
            c = kill_chain(out, rng, min(10, args.kills - len(kills)), events_of(straight) // 2,
                           args=[*ARGS, "--no-plots"])
            chains += 1
            assert c["code"] == 0, c["stderr"]
            kills += c["kills"]
            resumes += c["resumes"]
            restarts += c["starts"] - 1
            damaged += c["damaged"]
            differ += bool(differences(tmp / "straight-kill", out))
        kinds = {k.split(",")[0]: 0 for k in kills}
        for k in kills:
            kinds[k.split(",")[0]] += 1
        print(f"kill -9: {len(kills)} kills in {chains} runs ({', '.join(f'{v} at {k}' for k, v in kinds.items())}); "
              f"{resumes} resumes (and {restarts} runs started again, killed before writing "
              f"config.json); {chains - differ} of {chains} runs end with the uninterrupted "
              f"run's weights bit for bit; files damaged: {len(damaged)}")
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
