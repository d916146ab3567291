"""fast/threads.py: a batch cut into shards, the thread count setting, BLAS held to one
thread per shard, the host allocator."""

import platform
import subprocess
import sys

import pytest

import minivit
from minivit.fast import FastRunner, threads

from helpers import tiny_config


def test_shards_are_nearly_equal_and_never_empty():
    assert [s.stop - s.start for s in threads.shards(7, 3)] == [2, 2, 3]
    assert [s.stop - s.start for s in threads.shards(2, 3)] == [1, 1]     # fewer images than threads
    assert threads.shards(1, 4) == [slice(0, 1)]


def test_thread_count_setting(monkeypatch):
    monkeypatch.setenv("MINIVIT_THREADS", "3")
    assert threads.cpu_threads() == 3
    assert FastRunner(minivit.ViT(**tiny_config())).threads == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("MINIVIT_THREADS", bad)
        with pytest.raises(ValueError, match="MINIVIT_THREADS"):
            threads.cpu_threads()
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            FastRunner(minivit.ViT(**tiny_config()), threads=bad)


def test_parallel_map_propagates_errors_and_restores_blas_threads():
    threadpoolctl = pytest.importorskip("threadpoolctl")      # a dependency; a GPU image may lack it
    threadpool_info = threadpoolctl.threadpool_info
    # the BLAS libraries minivit holds (NumPy's among them); one loaded later, e.g. by
    # importing torch in another test, is not NumPy's and is left alone
    held = {i["filepath"] for i in threads._blas_controller().info() if i["user_api"] == "blas"}
    assert held

    def blas_threads():
        return [i["num_threads"] for i in threadpool_info() if i["filepath"] in held]

    before = blas_threads()
    seen = []

    def work(i):
        seen.append(blas_threads())
        if i == 2:
            raise RuntimeError("shard 2 failed")
        return i * i

    assert threads.parallel_map(work, range(2)) == [0, 1]
    assert all(t == [1] * len(before) for t in seen)      # one BLAS thread per shard
    with pytest.raises(RuntimeError, match="shard 2 failed"):
        threads.parallel_map(work, range(4))
    assert blas_threads() == before


def test_host_allocator_tuning_is_explicit_and_can_be_turned_off(monkeypatch):
    # importing minivit leaves the allocator alone: the mmap threshold stays dynamic
    code = "import minivit, minivit.train, minivit.cli; print('ok')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout == "ok\n"
    src = open(threads.__file__).read() + open(minivit.engine.backend.__file__).read()
    assert "HOST_ALLOCATOR_TUNED" not in src
    monkeypatch.setenv("MINIVIT_KEEP_MALLOC", "1")
    assert threads.tune_host_allocator() is False
    monkeypatch.delenv("MINIVIT_KEEP_MALLOC")
    if platform.libc_ver()[0] == "glibc":
        assert threads.tune_host_allocator() is True
