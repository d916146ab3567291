"""Faults a long run meets: a full disk at every write, kill -9 at seeded moments (NumPy,
the CuPy stand-in, two MPI ranks), signals during a save, a read-only or deleted run
folder, two processes on one run, a damaged checkpoint, a cut line in metrics.jsonl.
After each: one clear line, and no file lost; after --resume: the uninterrupted run's
weights, bit for bit. The machinery is benchmarks/fault_injection.py (which prints the
figures in benchmarks/RESULTS.md, Reliability)."""

import errno
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

import fault_injection as fi
from minivit import checkpoint as ckpt
from minivit import fast, files
from minivit.data import SAMPLE_FOLDER
from minivit.errors import MinivitError
from minivit.files import read_jsonl
from minivit.runlock import run_lock
from test_mpi import MPIRUN, WHY as MPI_MISSING

ARGS = fi.ARGS
QUICK = [*ARGS, "--no-plots"]


def main(argv, capsys):
    """cli.main in this process -> (exit status, stdout, stderr)."""
    code = fi.cli.main(argv)
    said = capsys.readouterr()
    return code, said.out, said.err


def one_line(err):
    """The error lines of a child's stderr (its own fault-event lines aside)."""
    return [s for s in err.splitlines() if s and not s.startswith(("fault", "event "))]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted run in a child process, its events logged -> (folder, events)."""
    out = tmp_path_factory.mktemp("straight") / "run"
    proc = fi.run_child([*QUICK, "--out", str(out)], FAULT_LOG=1)
    assert proc.returncode == 0, proc.stderr
    return out, fi.event_log(proc)


def stopped_run(out, straight):
    """A run of QUICK stopped cleanly (SIGTERM) after epoch 2 of its 3."""
    at = [i for i, e in enumerate(straight[1], 1) if e == "save: after the rename, checkpoint.npz"][1]
    proc = fi.run_child([*QUICK, "--out", str(out)], FAULT_AT=at, FAULT_SIGNALS="TERM")
    assert proc.returncode == 130 and "SIGTERM: stopped after epoch 2" in proc.stdout, proc.stderr


# ------------------------------------------------------------------------- a full disk

def test_a_full_disk_at_every_write_ends_in_one_line_and_loses_nothing(tmp_path):
    """ENOSPC at each write of a run, in turn; --resume on the still full disk; --resume
    after space is freed ends with the uninterrupted run's weights."""
    results = fi.disk_full_sweep(tmp_path / "sweep", tmp_path / "straight")
    assert {r["file"] for r in results} == {"config.json", "metrics.jsonl", "best.npz", "checkpoint.npz",
                                            "final.npz", "summary.json", "predictions.npz", "curves.png",
                                            "per_class.png", "predictions.png", "confusion.png"}
    for r in results:
        where = f"write {r['n']} ({r['file']})"
        assert r["code"] == 1 and "\n" not in r["message"], (where, r["message"])
        path = tmp_path / "sweep" / f"full-at-{r['n']}" / r["file"]
        assert (f"minivit train: error: cannot write {path}: no space left on device (it needs "
                in r["message"]), (where, r["message"])
        assert r["lost"] == [] and r["damaged"] == [], (where, r)
        if r["resumed"] is None:            # no checkpoint yet: start again, says the line
            assert "no checkpoint had been written yet: free some space on that disk, then start " \
                   "the run again" in r["message"], r["message"]
            continue
        assert "is intact: free some space on that disk, then continue with: minivit train " \
               "--resume --out" in r["message"], r["message"]
        assert r["code_still_full"] == 1 and "no space left on device" in r["message_still_full"]
        assert "\n" not in r["message_still_full"].strip()
        assert r["resumed"] == 0 and r["differs"] == [], (where, r)
    assert sum(r["resumed"] == 0 for r in results) >= 10


def test_a_full_disk_in_a_real_process(straight, tmp_path):
    """The command itself: one line, exit status 1, no traceback; the same on --resume."""
    out = tmp_path / "run"
    events = straight[1]
    at = [i for i, e in enumerate(events, 1) if e == "save: temporary file written, checkpoint.npz"][1]
    proc = fi.run_child([*QUICK, "--out", str(out)], FAULT_AT=at, FAULT_SIGNALS="ENOSPC")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    [line] = one_line(proc.stderr)
    assert re.fullmatch(re.escape(f"minivit train: error: cannot write {out}/checkpoint.npz: no space "
                                  f"left on device (it needs ") + r"\d+\.\d kB, \d+\.\d [kMG]B free" +
                        re.escape(f"); the last good checkpoint {out}/checkpoint.npz (epoch 1) is intact: "
                                  f"free some space on that disk, then continue with: minivit train "
                                  f"--resume --out {out}"), line), line
    proc = fi.run_child(["--resume", "--out", str(out), "--no-plots"], FAULT_AT=1, FAULT_SIGNALS="ENOSPC")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    [line] = one_line(proc.stderr)
    assert f"cannot write {out}/metrics.jsonl: no space left on device" in line and "(epoch 1) is intact" in line
    proc = fi.run_child(["--resume", "--out", str(out), "--no-plots"])
    assert proc.returncode == 0, proc.stderr
    assert fi.differences(straight[0], out) == []


# ---------------------------------------------------------------------------- kill -9

def test_kill_9_at_30_seeded_moments_then_resume_is_bit_for_bit(straight, tmp_path):
    rng = np.random.default_rng(21)
    kills, span, chains = [], len(straight[1]) // 2, 0
    while len(kills) < 30:                   # runs of up to 10 kills, each resumed to its end
        out = tmp_path / f"chain-{chains}"
        c = fi.kill_chain(out, rng, min(10, 30 - len(kills)), span, args=QUICK)
        assert c["code"] == 0, c["stderr"]
        assert c["damaged"] == [], c["damaged"]
        assert fi.differences(straight[0], out) == []
        kills += c["kills"]
        chains += 1
    assert chains <= 5
    kinds = {k.split(",")[0] for k in kills}
    assert kinds >= {"step: forward", "step: backward", "evaluation: forward",
                     "save: temporary file written", "save: before the rename",
                     "save: after the rename"}, kinds


def test_kill_9_on_the_cupy_stand_in(tmp_path):
    args = [*QUICK, "--backend", "cupy"]
    straight = fi.run_child([*args, "--out", str(tmp_path / "straight")], FAULT_CUPY_STRICT=1)
    assert straight.returncode == 0, straight.stderr
    c = fi.kill_chain(tmp_path / "run", np.random.default_rng(3), 3, fi.events_of(straight) // 2,
                      args=args, FAULT_CUPY_STRICT=1)
    assert c["code"] == 0 and len(c["kills"]) == 3, c
    assert c["damaged"] == [] and "on cupy" in fi.run_child(
        ["--resume", "--out", str(tmp_path / "run"), "--backend", "cupy", "--no-plots"],
        FAULT_CUPY_STRICT=1).stdout
    assert fi.differences(tmp_path / "straight", tmp_path / "run") == []


@pytest.mark.skipif(MPIRUN is None, reason=MPI_MISSING or "")
def test_kill_9_of_either_rank_of_a_two_rank_run(tmp_path):
    mpirun = MPIRUN
    straight = fi.run_child([*QUICK, "--out", str(tmp_path / "straight")], mpirun=mpirun)
    assert straight.returncode == 0, straight.stderr
    rng = np.random.default_rng(5)
    for rank, span in ((0, 30), (1, 14)):            # rank 1 writes nothing: fewer events
        out = tmp_path / f"rank{rank}"
        c = fi.kill_chain(out, rng, 2, span, args=QUICK, mpirun=mpirun, FAULT_RANK=rank)
        assert c["code"] == 0 and len(c["kills"]) == 2, c
        assert c["damaged"] == []
        assert fi.differences(tmp_path / "straight", out) == []


# ----------------------------------------------------------------- signals during a save

@pytest.mark.parametrize("signals, file, nth, code", [
    ("TERM", "checkpoint.npz", 0, 130),       # the save ends, then the run stops cleanly
    ("INT,INT", "checkpoint.npz", 1, 130),    # a second Ctrl-C cuts the save: the old file stays
    ("TERM", "summary.json", 0, -signal.SIGTERM),   # after training: SIGTERM ends the process
])
def test_a_signal_during_a_save(straight, tmp_path, signals, file, nth, code):
    out = tmp_path / "run"
    at = [i for i, e in enumerate(straight[1], 1) if e == f"save: temporary file written, {file}"][nth]
    proc = fi.run_child([*QUICK, "--out", str(out)], FAULT_AT=at, FAULT_SIGNALS=signals)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr and fi.damaged_files(out) == []
    if signals == "INT,INT":
        assert fi.leftovers(out) == [] and ckpt.load(out / "checkpoint.npz")[2]["epoch"] == 1
    proc = fi.run_child(["--resume", "--out", str(out), "--no-plots"])
    assert proc.returncode == 0, proc.stderr
    assert fi.leftovers(out) == [] and fi.differences(straight[0], out) == []


# --------------------------------------------------------- read-only and vanished folders

def test_a_read_only_run_folder(straight, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    stopped_run(out, straight)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    if os.geteuid() == 0:                # root writes anyway: fail as a read-only disk would
        def read_only(*a, **kw):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    else:
        out.chmod(0o555)
    try:
        code, _, err = main(["train", "--resume", "--out", str(out)], capsys)
    finally:
        out.chmod(0o755)
        monkeypatch.undo()
    assert code == 1, err
    assert err.startswith(f"minivit train: error: cannot write {out}/metrics.jsonl: ")
    assert err.endswith(f"; the last good checkpoint {out}/checkpoint.npz (epoch 2) is intact: make "
                        f"{out} writable again, then continue with: minivit train --resume --out {out}\n")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    code, _, err = main(["train", "--resume", "--out", str(out), "--no-plots"], capsys)
    assert code == 0, err


def test_a_run_folder_deleted_mid_run(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real, steps = fast.FastRunner.backward, []

    def backward(self, *a, **kw):
        steps.append(1)
        if len(steps) == 6:                                      # epoch 2, batch 2
            shutil.rmtree(out)
        return real(self, *a, **kw)
    monkeypatch.setattr(fast.FastRunner, "backward", backward)
    code, _, err = main(["train", *QUICK, "--out", str(out)], capsys)
    assert code == 1, err
    first = err.split("cannot write ")[1].split(":")[0]       # the epoch's first write
    assert first in (f"{out}/best.npz", f"{out}/metrics.jsonl"), err
    assert err == (f"minivit train: error: cannot write {first}: its folder {out} no longer exists "
                   f"(deleted or moved); nothing of the run is left to continue from: start it again\n")
    assert not out.exists()                 # not made again, half empty


# --------------------------------------------------------------- two processes, one run

def test_a_second_process_on_a_run_is_refused_and_a_killed_holder_blocks_nothing(straight, tmp_path,
                                                                                   capsys):
    out = tmp_path / "run"
    stopped_run(out, straight)
    at = 10                                   # the first holds the run, stopped mid-epoch
    first = subprocess.Popen([sys.executable, "-c", fi.CHILD, "train", "--resume", "--out", str(out),
                              "--no-plots"], env=fi.child_env(FAULT_AT=at, FAULT_SIGNALS="STOP"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _, status = os.waitpid(first.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status)
        proc = fi.run_child(["--resume", "--out", str(out), "--no-plots"])
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert one_line(proc.stderr) == [
            f"minivit train: error: {out} is in use by process {first.pid} (another `minivit train` on "
            f"this run): wait for it to end, or stop it, then continue with: minivit train --resume "
            f"--out {out}; or give this run another --out"]
        with pytest.raises(MinivitError, match=f"in use by process {first.pid}"):
            with run_lock(out):
                pass
    finally:
        first.kill()                          # kill -9: its lock goes with it
        first.wait()
    code, _, err = main(["train", "--resume", "--out", str(out), "--no-plots"], capsys)
    assert code == 0, err
    assert fi.differences(straight[0], out) == [] and fi.leftovers(out) == []


# -------------------------------------------------------------------- damaged files

def test_a_damaged_checkpoint_names_what_is_intact_and_the_command_goes_on(straight, tmp_path, capsys):
    out = tmp_path / "run"
    stopped_run(out, straight)
    best = ckpt.load(out / "best.npz")[2]["epoch"]
    data = (out / "checkpoint.npz").read_bytes()
    (out / "checkpoint.npz").write_bytes(data[:len(data) // 2])         # cut short
    code, _, err = main(["train", "--resume", "--out", str(out)], capsys)
    assert code == 2
    command = (f"minivit train --config {out}/config.json --init-from {out}/best.npz "
               f"--epochs {3 - best} --data {SAMPLE_FOLDER}")
    assert err == (f"minivit train: error: {out}/checkpoint.npz is truncated or damaged, or not a .npz "
                   f"checkpoint at all (it is not a whole zip archive), so the run cannot resume "
                   f"exactly; still intact: {out}/best.npz (epoch {best}): go on from the latest in a "
                   f"new run folder (its weights; the optimizer state and the place in the schedule "
                   f"were in checkpoint.npz): {command}\n")
    argv = shlex.split(command)[1:] + ["--out", str(tmp_path / "next"), "--no-progress", "--no-plots"]
    code, said, err = main(argv, capsys)
    assert code == 0, err
    assert f"Starting from the weights of {out}/best.npz (epoch {best})" in said
    (out / "best.npz").write_bytes(b"junk")
    code, _, err = main(["train", "--resume", "--out", str(out)], capsys)
    assert code == 2 and err.endswith(f", and no other checkpoint of {out} is intact: start the run "
                                      f"again: minivit train --config {out}/config.json\n"), err


def test_a_cut_last_line_of_metrics_is_read_around(straight, tmp_path, capsys):
    out = tmp_path / "run"
    stopped_run(out, straight)
    whole = (out / "metrics.jsonl").read_text()
    with open(out / "metrics.jsonl", "a") as f:
        f.write(whole.splitlines()[-1].replace('"epoch": 2', '"epoch": 3')[:60])   # a cut append
    note = f"{out}/metrics.jsonl: its last line (line 3) was cut short, as by a process stopped " \
           f"while writing it; read the 2 whole lines before it"
    code, said, err = main(["plot", str(out)], capsys)
    assert code == 0 and note in said and f"{out}/curves.png" in said, (said, err)
    code, said, err = main(["train", "--resume", "--out", str(out), "--no-plots"], capsys)
    assert code == 0 and note in said, err
    assert [m["epoch"] for m in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("\n".join([lines[0], lines[1][:30], lines[2]]) + "\n")
    code, said, err = main(["plot", str(out)], capsys)
    assert code == 1 and err.startswith(f"minivit plot: error: {out}/metrics.jsonl: line 2 is not a "
                                        f"JSON record ("), err


def test_the_fault_injection_script_prints_its_figures():
    proc = subprocess.run([sys.executable, str(fi.ROOT / "benchmarks" / "fault_injection.py"), "--kills",
                           "2", "--writes", "5"], capture_output=True, text=True, timeout=300,
                          env=fi.child_env())
    assert proc.returncode == 0, proc.stderr
    assert "full disk: 5 writes failed (" in proc.stdout and "files lost or damaged: 0" in proc.stdout
    assert "kill -9: 2 kills in 1 runs (" in proc.stdout and "files damaged: 0" in proc.stdout
