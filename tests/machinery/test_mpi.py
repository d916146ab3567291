"""Data-parallel training over MPI (distributed.py): two ranks end with the weights of one
process, a stop request to one rank stops them all and the run resumes on two ranks, a
failing rank stops the job cleanly, each rank takes its own GPU, ranks on one machine share
its cores. Skipped where MPI cannot start. (kill -9 of a rank: test_kill.py.)"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minivit import checkpoint as ckpt
from minivit.config import TrainConfig
from minivit.distributed import World
from minivit.files import read_jsonl
from minivit.train import train

import helpers

HERE = Path(__file__).resolve().parent.parent          # tests/: mpi_helpers.py, cupy_strict.py
ROOT = HERE.parent
MPIRUN = helpers.MPIRUN
pytestmark = pytest.mark.skipif(MPIRUN is None, reason=helpers.MPI_MISSING or "")

# a tiny float64 run: batch 31 does not split evenly over 2 ranks (15 + 16)
ARGS = ["--embed-dim", "12", "--depth", "2", "--num-heads", "3", "--mlp-ratio", "2",
        "--batch-size", "31", "--limit-train", "220", "--dtype", "float64", "--drop-path", "0.2",
        "--mixup", "0.5", "--random-erase", "0.25", "--no-progress", "--no-plots"]
CFG = dict(embed_dim=12, depth=2, num_heads=3, mlp_ratio=2.0, batch_size=31, limit_train=220,
           dtype="float64", drop_path=0.2, mixup=0.5, random_erase=0.25)


def mpirun(n, args, timeout=180, script=None, env=None):
    target = [str(script)] if script else ["-m", "minivit"]
    environment = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{HERE}", MINIVIT_DATA="",
                       **(env or {}))
    return subprocess.Popen([MPIRUN, "-n", str(n), sys.executable, *target, "train", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=environment, cwd=ROOT, start_new_session=True)


def finish(proc, timeout=180):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:        # a hung job: kill mpirun and every rank
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the MPI job hung for {timeout} s:\n{out}\n{err}")
    return proc.returncode, out, err


def one_process(out, epochs=2):
    cfg = TrainConfig.from_preset("sample", epochs=epochs, **CFG)
    return train(cfg, out=out, progress=False, plots=False, log=lambda *a: None)


def assert_same_weights(a, b, rtol=1e-10):
    wa, wb = ckpt.load(a)[0], ckpt.load(b)[0]
    for k in wa:
        np.testing.assert_allclose(wb[k], wa[k], rtol=rtol, atol=1e-13, err_msg=k)


def test_a_world_of_one_does_nothing():
    w = World()
    assert (w.rank, w.size, w.main) == (0, 1, True) and w.part(7) == slice(0, 7)
    g = np.ones(3)
    w.sum_gradients(g)
    assert g.tolist() == [1, 1, 1] and w.sum([2.0, 3]) == [2.0, 3] and w.any(True) and w.share(5) == 5


def test_two_ranks_end_with_the_weights_of_one_process(tmp_path):
    code, out, err = finish(mpirun(2, ["--epochs", "2", "--out", str(tmp_path / "mpi"), *ARGS]))
    assert code == 0, err
    assert "on 2 processes" in out and out.count("Test accuracy") == 1      # rank 0 alone logs
    one_process(tmp_path / "one")
    assert_same_weights(tmp_path / "one" / "checkpoint.npz", tmp_path / "mpi" / "checkpoint.npz")
    a, b = read_jsonl(tmp_path / "one" / "metrics.jsonl"), read_jsonl(tmp_path / "mpi" / "metrics.jsonl")
    for ma, mb in zip(a, b):                      # validation scored in parallel, then combined
        assert mb["val_acc"] == ma["val_acc"] and abs(mb["val_loss"] - ma["val_loss"]) < 1e-9
        assert abs(mb["train_loss"] - ma["train_loss"]) < 1e-9


def test_a_stop_request_to_one_rank_stops_every_rank_and_the_run_resumes_on_two(tmp_path):
    """SIGTERM reaching one rank between epochs stops all of them after that epoch (the
    ranks decide together; one rank stopping alone left the other waiting forever); --resume
    on two ranks then ends with one process's weights."""
    out = tmp_path / "mpi"
    code, said, err = finish(mpirun(2, ["--epochs", "4", "--out", str(out), *ARGS],
                                    script=HERE / "mpi_helpers.py", env={"SIGNAL_RANK": "1"}), timeout=60)
    assert code == 130, err
    assert "a stop request to another rank: stopped after epoch 1" in said
    assert ckpt.load(out / "checkpoint.npz")[2]["epoch"] == 1
    code, _, err = finish(mpirun(2, ["--resume", "--out", str(out), "--no-progress", "--no-plots"]))
    assert code == 0, err
    one_process(tmp_path / "one", epochs=4)
    assert_same_weights(tmp_path / "one" / "checkpoint.npz", out / "checkpoint.npz")


def test_a_failing_rank_stops_the_job_and_keeps_the_checkpoint(tmp_path):
    out = tmp_path / "mpi"
    code, _, err = finish(mpirun(2, ["--epochs", "3", "--out", str(out), *ARGS],
                                 script=HERE / "mpi_helpers.py", env={"FAIL_RANK": "1"}))
    assert code != 0
    assert "rank 1 failed: RuntimeError: planted failure in epoch 3" in err
    weights, _, meta = ckpt.load(out / "checkpoint.npz")   # whole: epoch 1, or 2 if rank 0 was
    assert meta["epoch"] in (1, 2) and weights             # through writing it before the stop


@pytest.mark.parametrize("cuda_aware", ["0", "1"], ids=["pinned-host", "cuda-aware"])
def test_the_gpu_side_sums_gradients_on_each_ranks_own_gpu(tmp_path, cuda_aware):
    """Two ranks on the strict CuPy stand-in, with two GPUs: each rank takes its own GPU,
    the gradients are summed through a pinned host buffer (MPI not CUDA-aware) or on the
    device buffer itself (CUDA-aware MPI), and the weights equal one NumPy process's."""
    code, out, err = finish(mpirun(2, ["--epochs", "2", "--backend", "cupy", "--out",
                                       str(tmp_path / "mpi"), *ARGS], script=HERE / "mpi_helpers.py",
                                   env={"CUPY_STRICT": "1", "STRICT_DEVICES": "2", "REPORT_GPU": "1",
                                        "MINIVIT_CUDA_AWARE_MPI": cuda_aware}))
    assert code == 0, err
    assert "on cupy on 2 processes" in out
    path = "device buffer" if cuda_aware == "1" else "pinned host buffer"
    for rank in (0, 1):
        assert f"rank {rank}: GPU {rank}, gradients summed through the {path}" in out, out
    one_process(tmp_path / "one")
    assert_same_weights(tmp_path / "one" / "checkpoint.npz", tmp_path / "mpi" / "checkpoint.npz")


def test_cuda_awareness_is_asked_of_the_mpi_library(monkeypatch):
    from minivit.distributed import cuda_aware_mpi
    monkeypatch.delenv("MINIVIT_CUDA_AWARE_MPI", raising=False)
    assert cuda_aware_mpi() is False                 # the MPICH from the package index
    monkeypatch.setenv("MINIVIT_CUDA_AWARE_MPI", "1")
    assert cuda_aware_mpi() is True
    monkeypatch.setenv("MINIVIT_CUDA_AWARE_MPI", "yes")
    with pytest.raises(ValueError, match="set it to 1 .* or 0"):
        cuda_aware_mpi()


def test_two_ranks_with_a_progress_bar_and_a_time_budget(tmp_path):
    """The progress bar (rank 0) and a time budget (rank 0's clock, here one that moves
    0.125 s a step) keep every rank in step: 2 s are 16 steps on both."""
    args = [a for a in ARGS if a != "--no-progress"]
    code, out, err = finish(mpirun(2, ["--time-budget", "2s", "--out", str(tmp_path / "mpi"), *args],
                                   script=HERE / "mpi_helpers.py", env={"STEP_CLOCK": "0.125"}))
    assert code == 0, err
    last = read_jsonl(tmp_path / "mpi" / "metrics.jsonl")[-1]
    assert last["train_seconds"] == 2.0 and last["step"] == 16


def test_ranks_sharing_a_machine_share_its_cores(tmp_path):
    """Two ranks on a 2-core machine run one BLAS thread each (not one per core each,
    which oversubscribed the cores: 84 instead of 140 images/s in benchmarks/mpi_scaling.py)."""
    code, out, err = finish(mpirun(2, ["--epochs", "1", "--out", str(tmp_path / "mpi"), *ARGS],
                                   script=HERE / "mpi_helpers.py",
                                   env={"REPORT_BLAS": "1", "MINIVIT_THREADS": "2"}))
    assert code == 0, err
    assert "rank 0: BLAS threads [1]" in out and "rank 1: BLAS threads [1]" in out, out
