"""The run folder: a run never overwrites or mixes with another's files, gets a folder of
its own, leaves none behind when it fails to start, is held by one process at a time, and
says in one line what happened when its folder turns read-only or disappears;
metrics.jsonl with a cut last line is read around."""

import errno
import os
import shutil
import subprocess
import sys

import pytest

import fault_injection as fi
from minivit import cli, data, fast, files
from minivit import run as run_module
from minivit.config import TrainConfig
from minivit.errors import MinivitError
from minivit.files import read_jsonl
from minivit.runlock import run_lock
from minivit.train import train

from helpers import FAULT_ARGS, TINY, TINY_ARGS, exit_status, quiet, stopped_run


def test_a_finished_run_is_never_overwritten(tmp_path, capsys):
    cfg = TrainConfig.from_preset("sample", epochs=1, **TINY)
    train(cfg, out=tmp_path / "run", progress=False, plots=False, log=quiet)
    with pytest.raises(ValueError, match="already holds a run .*pass --resume") as err:
        train(cfg, out=tmp_path / "run", progress=False, plots=False, log=quiet)
    assert isinstance(err.value, MinivitError)
    assert cli.main(["train", "--out", str(tmp_path / "run"), "--no-plots", *TINY_ARGS]) == 2
    assert "already holds a run (checkpoint.npz): pass --resume" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--resume: no checkpoint at"):
        train(None, out=tmp_path / "other", resume=True, log=quiet)


def test_a_new_run_refuses_a_folder_holding_other_files(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "metrics.jsonl").write_text("my own notes\n")
    cfg = TrainConfig.from_preset("sample", epochs=1, **TINY)
    with pytest.raises(ValueError, match=r"mine is not empty \(it holds metrics.jsonl\).*choose another --out"):
        train(cfg, out=out, progress=False, plots=False, log=quiet)
    assert sorted(os.listdir(out)) == ["metrics.jsonl"]              # nothing written, nothing lost
    assert (out / "metrics.jsonl").read_text() == "my own notes\n"


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli.time, "strftime", lambda fmt: "20261124-120000")
    for seed in ("1", "2"):
        assert cli.main(["train", "--epochs", "1", "--seed", seed, "--no-plots", *TINY_ARGS]) == 0
    runs = sorted(os.listdir(tmp_path / "runs"))
    assert runs == ["sample-20261124-120000", "sample-20261124-120000-2"]
    seeds = [files.read_json(tmp_path / "runs" / r / "config.json")["seed"] for r in runs]
    assert seeds == [1, 2]
    assert all(len(read_jsonl(tmp_path / "runs" / r / "metrics.jsonl")) == 1 for r in runs)
    assert "Run folder: runs/sample-20261124-120000-2" in capsys.readouterr().out


def test_a_failed_start_leaves_no_empty_folder(tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise data.DataError("the data broke")
    monkeypatch.setattr(run_module, "prepare_data", broken)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--epochs", "1", "--out", "new/run", *TINY_ARGS]) == 2
    assert "the data broke" in capsys.readouterr().err
    assert not (tmp_path / "new" / "run").exists()
    assert exit_status(["train", "--epochs", "1", *TINY_ARGS]) == 2          # the default folder too
    assert os.listdir(tmp_path / "runs") == []


def test_an_unwritable_output_folder_is_refused_up_front(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert exit_status(["train", "--out", str(blocker / "run")]) == 2
    assert "minivit train: error: --out" in capsys.readouterr().err


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
        code = cli.main(["train", "--resume", "--out", str(out)])
    finally:
        out.chmod(0o755)
        monkeypatch.undo()
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.startswith(f"minivit train: error: cannot write {out}/metrics.jsonl: ")
    assert err.endswith(f"; the last good checkpoint {out}/checkpoint.npz (epoch 2) is intact: make "
                        f"{out} writable again, then continue with: minivit train --resume --out {out}\n")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert cli.main(["train", "--resume", "--out", str(out), "--no-plots"]) == 0


def test_a_run_folder_deleted_mid_run(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real, steps = fast.FastRunner.backward, []

    def backward(self, *a, **kw):
        if kw.get("need_dx") is False:                           # a training step's
            steps.append(1)
            if len(steps) == 6:                                  # epoch 2, batch 2
                shutil.rmtree(out)
        return real(self, *a, **kw)
    monkeypatch.setattr(fast.FastRunner, "backward", backward)
    assert cli.main(["train", *FAULT_ARGS, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    first = err.split("cannot write ")[1].split(":")[0]       # the epoch's first write
    assert first in (f"{out}/best.npz", f"{out}/metrics.jsonl"), err
    assert err == (f"minivit train: error: cannot write {first}: its folder {out} no longer exists "
                   f"(deleted or moved); nothing of the run is left to continue from: start it again\n")
    assert not out.exists()                 # not made again, half empty


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
        assert [s for s in proc.stderr.splitlines() if s and not s.startswith(("fault", "event "))] == [
            f"minivit train: error: {out} is in use by process {first.pid} (another `minivit train` on "
            f"this run): wait for it to end, or stop it, then continue with: minivit train --resume "
            f"--out {out}; or give this run another --out"]
        with pytest.raises(RuntimeError, match=f"in use by process {first.pid}"):
            with run_lock(out):
                pass
    finally:
        first.kill()                          # kill -9: its lock goes with it
        first.wait()
    assert cli.main(["train", "--resume", "--out", str(out), "--no-plots"]) == 0
    assert fi.differences(straight[0], out) == [] and fi.leftovers(out) == []


def test_a_cut_last_line_of_metrics_is_read_around(straight, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "run"
    stopped_run(out, straight)
    whole = (out / "metrics.jsonl").read_text()
    with open(out / "metrics.jsonl", "a") as f:
        f.write(whole.splitlines()[-1].replace('"epoch": 2', '"epoch": 3')[:60])   # a cut append
    note = f"{out}/metrics.jsonl: its last line (line 3) was cut short, as by a process stopped " \
           f"while writing it; read the 2 whole lines before it"
    assert cli.main(["plot", str(out)]) == 0
    said = capsys.readouterr().out
    assert note in said and f"{out}/curves.png" in said, said
    assert cli.main(["train", "--resume", "--out", str(out), "--no-plots"]) == 0
    assert note in capsys.readouterr().out
    assert [m["epoch"] for m in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("\n".join([lines[0], lines[1][:30], lines[2]]) + "\n")
    assert cli.main(["plot", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"minivit plot: error: {out}/metrics.jsonl: line 2 is not a JSON record ("), err
