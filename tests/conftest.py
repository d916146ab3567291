"""The test suite, in two tiers that mirror the package:

    python -m pytest            the default tier: tests/engine (the student's path),
                                tests/course (the exercises and their grading), tests/fast (the fast path against the engine) and tests/docs
                                (the docs' quotes and the README's code), on NumPy
    python -m pytest --full     everything: the default tier on the strict CuPy stand-in too,
                                tests/machinery (the command line, training runs, data,
                                checkpoints, faults, MPI, the notebook, examples and
                                benchmarks' scripts) and tests/gpu (the strict stand-in's own
                                rules and real CuPy's replay of what it ran)

A folder of the full tier named on the command line (python -m pytest tests/machinery) is
collected without --full; tests marked `full` (the strict stand-in's cases of the default
tier) still need --full.

Support modules live here, at tests/: helpers.py (settings and helpers shared by the
tests), cupy_strict.py and cupy_real.py (the CuPy stand-in and real CuPy's replay),
mpi_helpers.py (what an MPI rank runs), cupy_api/ and reference/ (their data).
"""

import sys
from pathlib import Path

import pytest

from minivit.engine.backend import gpu_available

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TIERS = ("engine", "course", "fast", "docs", "machinery", "gpu")
FULL_TIER = ("machinery", "gpu")          # collected only with --full (or when named)

sys.path.insert(0, str(ROOT / "benchmarks"))   # fault_injection, launch_count, torch_simplevit
for tier in TIERS:                             # a test module may read another's (test_docs)
    sys.path.insert(0, str(HERE / tier))
sys.path.insert(0, str(HERE))                  # helpers, cupy_strict, cupy_real


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true", default=False,
                     help="run the whole suite: tests/machinery, tests/gpu and the strict CuPy "
                          "stand-in's cases too (without it: tests/engine, tests/fast, tests/docs "
                          "on NumPy)")


def _named_paths(config):
    """The paths given on the command line (node ids cut at '::')."""
    return [Path(str(a).split("::")[0]).resolve() for a in config.args]


def pytest_ignore_collect(collection_path, config):
    """Without --full, leave out tests/machinery and tests/gpu, unless a path inside one of
    them was named on the command line."""
    if config.getoption("full"):
        return None
    path = Path(str(collection_path)).resolve()
    for name in FULL_TIER:
        folder = HERE / name
        if path == folder or folder in path.parents:
            named = any(a == folder or folder in a.parents or a in path.parents or a == path
                        for a in _named_paths(config) if a != HERE and a != ROOT)
            return None if named else True
    return None


def pytest_collection_modifyitems(config, items):
    """Without --full, deselect the tests marked `full`."""
    if config.getoption("full"):
        return
    kept, dropped = [], []
    for item in items:
        (dropped if item.get_closest_marker("full") else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def _backends():
    """numpy; the real CuPy where a GPU works, else the strict CuPy stand-in
    (cupy_strict.py), whose cases run with --full."""
    if gpu_available():
        return ["numpy", pytest.param("cupy", marks=pytest.mark.gpu)]
    return ["numpy", pytest.param("cupy-strict", marks=pytest.mark.full)]


BACKENDS = _backends()


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Runs a test once per backend and returns the backend name to pass to minivit:
    "numpy", or "cupy" (a real GPU, or, without one, the strict stand-in installed as
    CuPy for this test only)."""
    if request.param == "cupy-strict":
        import cupy_strict
        cupy_strict.install(monkeypatch)
        return "cupy"
    return request.param


@pytest.fixture
def cupy_strict_module(monkeypatch):
    """The strict stand-in installed as CuPy (for tests of the stand-in and the budget)."""
    import cupy_strict
    return cupy_strict.install(monkeypatch)


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch):
    monkeypatch.delenv("MINIVIT_BACKEND", raising=False)


@pytest.fixture(scope="session")
def straight(tmp_path_factory):
    """An uninterrupted fault-injection run (benchmarks/fault_injection.py's tiny run, no
    plots) in a child process, its events logged -> (folder, events): what the fault tests
    of tests/machinery compare their interrupted runs with."""
    import fault_injection as fi
    from helpers import FAULT_ARGS
    out = tmp_path_factory.mktemp("straight") / "run"
    proc = fi.run_child([*FAULT_ARGS, "--out", str(out)], FAULT_LOG=1)
    assert proc.returncode == 0, proc.stderr
    return out, fi.event_log(proc)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """A finished run of `minivit train`: 2 epochs of a tiny model on 200 images of the
    shipped sample, with its plots. The command-line tests of tests/machinery read it."""
    from minivit import cli
    from helpers import TINY_ARGS
    out = tmp_path_factory.mktemp("cli") / "run"
    assert cli.main(["train", "--epochs", "2", "--out", str(out), *TINY_ARGS]) == 0
    return out
