"""A full disk (ENOSPC) at any write of a run: one line naming the file, what it needed and
what is free, exit status 1, no file lost; --resume on the still full disk says the same,
and --resume after space is freed ends with the uninterrupted run's weights, bit for bit.
The machinery: benchmarks/fault_injection.py."""

import re

import fault_injection as fi

from helpers import FAULT_ARGS


def test_a_full_disk_at_every_write_ends_in_one_line_and_loses_nothing(tmp_path):
    """ENOSPC at each write of a run, in turn (in this process)."""
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


def one_line(err):
    """The error lines of a child's stderr (its own fault-event lines aside)."""
    return [s for s in err.splitlines() if s and not s.startswith(("fault", "event "))]


def test_a_full_disk_in_a_real_process(straight, tmp_path):
    """The command itself: one line, exit status 1, no traceback; the same on --resume."""
    out = tmp_path / "run"
    events = straight[1]
    at = [i for i, e in enumerate(events, 1) if e == "save: temporary file written, checkpoint.npz"][1]
    proc = fi.run_child([*FAULT_ARGS, "--out", str(out)], FAULT_AT=at, FAULT_SIGNALS="ENOSPC")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    [line] = one_line(proc.stderr)
    assert re.fullmatch(re.escape(f"minivit train: error: cannot write {out}/checkpoint.npz: no space "
                                  f"left on device (it needs ") + r"\d+\.\d kB, \d+\.\d [kMG]B free" +
                        re.escape(f"); the last good checkpoint {out}/checkpoint.npz (epoch 1) is intact: "
                                  f"free some space on that disk, then continue with: minivit train "
                                  f"--resume --out {out}"), line), line
    # a resumed run writes metrics.jsonl first (after the events, if any, of its check of the
    # fast path against the engine, which come first in any run)
    checks = next(i for i, e in enumerate(events) if not e.startswith("check"))
    proc = fi.run_child(["--resume", "--out", str(out), "--no-plots"], FAULT_AT=checks + 1,
                        FAULT_SIGNALS="ENOSPC")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    [line] = one_line(proc.stderr)
    assert f"cannot write {out}/metrics.jsonl: no space left on device" in line and "(epoch 1) is intact" in line
    proc = fi.run_child(["--resume", "--out", str(out), "--no-plots"])
    assert proc.returncode == 0, proc.stderr
    assert fi.differences(straight[0], out) == []
