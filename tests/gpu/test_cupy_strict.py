"""The strict CuPy stand-in (tests/cupy_strict.py): each of CuPy's rules it enforces fires;
its API snapshot matches the installed CuPy and holds every CuPy name minivit uses; host
arrays planted in device code fail the suite; one training step stays within its launch
budget and reads the device only when the loop prints."""

import os

import numpy as np
import pytest

import cupy_strict
import minivit
from minivit import augment, evaluate
from minivit.engine.draws import StepDraws

from helpers import plant

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))     # tests/


@pytest.fixture
def cp(cupy_strict_module):
    return cupy_strict_module


# --------------------------------------------------------------------- the rules

def test_a_distinct_array_type_that_numpy_cannot_read(cp):
    a = cp.asarray(np.arange(3.0))
    assert isinstance(a, cp.ndarray) and not isinstance(a, np.ndarray)
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.asarray(a)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.array(a)
    np.testing.assert_array_equal(cp.asnumpy(a), [0.0, 1.0, 2.0])       # the explicit way


@pytest.mark.parametrize("host", [np.ones(3), np.array(2.0)], ids=["array", "0-d array"])
def test_numpy_arrays_never_mix_with_device_arrays(cp, host):
    a = cp.asarray(np.ones(3))
    for mix in (lambda: a + host, lambda: host * a, lambda: a.__iadd__(host),
                lambda: cp.maximum(a, host), lambda: cp.concatenate([a, np.ones(3)])):
        with pytest.raises(TypeError, match="NumPy array"):
            mix()
    with pytest.raises(TypeError, match="assigning into a device array"):
        a[...] = host
    with pytest.raises(TypeError, match="indexing"):
        a[np.array([0, 1])]
    assert float((a + 2.0 + np.float32(1.0)).sum()) == 12.0              # scalars are fine


def test_numpy_functions_dispatch_only_where_cupy_has_them(cp):
    a = cp.asarray(np.ones((2, 3)))
    assert isinstance(np.exp(a), cp.ndarray) and isinstance(np.concatenate([a, a]), cp.ndarray)
    assert "histogram_bin_edges" not in cupy_strict.API_FUNCTIONS
    with pytest.raises(TypeError, match="real CuPy has no cupy.histogram_bin_edges"):
        np.histogram_bin_edges(a)


def test_reductions_stay_on_the_device_and_reading_them_is_a_sync(cp):
    a = cp.asarray(np.arange(4.0))
    total = a.sum()
    assert isinstance(total, cp.ndarray) and total.shape == ()
    cupy_strict.COUNTS.reset()
    assert float(total) == 6.0 and int(a.max()) == 3 and bool(a.min() == 0) and a[1].item() == 1.0
    assert cupy_strict.COUNTS.syncs == 4
    with pytest.raises(TypeError):
        range(cp.asarray(np.array(3)))                    # no __index__
    with pytest.raises(TypeError):
        [1, 2, 3][cp.asarray(np.array(1))]


def test_transfers_copy(cp):
    host = np.zeros(3)
    dev = cp.asarray(host)
    host[0] = 7.0
    assert float(dev[0]) == 0.0
    back = dev.get()
    back[1] = 5.0
    assert float(dev[1]) == 0.0


def test_only_real_cupy_names_and_keywords(cp):
    a = cp.asarray(np.ones((2, 2)))
    with pytest.raises(AttributeError, match="module 'cupy' has no attribute 'histogram_bin_edges'"):
        cp.histogram_bin_edges(a)
    with pytest.raises(AttributeError, match="has no attribute 'tobytes_fast'"):
        a.tobytes_fast()
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['initial'\\]"):
        a.sum(initial=0.0)                              # NumPy has it; CuPy's ndarray.sum does not
    with pytest.raises(TypeError, match="unexpected keyword"):
        cp.exp(a, where=a > 0)


def test_operations_and_syncs_are_counted(cp):
    a = cp.asarray(np.ones((4, 4)))
    cupy_strict.COUNTS.reset()
    b = a @ a + 1.0                                      # two kernels
    b.reshape(16)                                        # a view: no kernel
    b.T.copy()                                           # a copy: one
    b[0] = 0.0                                           # one
    assert cupy_strict.COUNTS.snapshot() == (4, 0)
    cp.asnumpy(b)
    assert cupy_strict.COUNTS.syncs == 1


def test_fuse_counts_one_operation_and_allows_only_elementwise_work(cp):
    @cp.fuse(kernel_name="axpy")
    def axpy(a, x, y):
        return a * x + cp.exp(y)

    x = cp.asarray(np.ones(5))
    cupy_strict.COUNTS.reset()
    out = axpy(2.0, x, x)
    assert cupy_strict.COUNTS.ops == 1
    np.testing.assert_allclose(cp.asnumpy(out), 2.0 + np.e)

    @cp.fuse()
    def not_elementwise(x):
        return x @ x

    with pytest.raises(TypeError, match="cupy.fuse"):
        not_elementwise(x)
    with pytest.raises(TypeError, match="NumPy array"):
        axpy(2.0, x, np.ones(5))


def test_kernels_run_through_fuse_on_the_device(cp):
    from minivit.fast import kernels
    x = cp.asarray(np.linspace(-3, 3, 10))
    cupy_strict.COUNTS.reset()
    y, dgelu = kernels.gelu_bias(x, 0.5)
    assert cupy_strict.COUNTS.ops == 1
    ref_y, ref_d = kernels.gelu_bias(np.linspace(-3, 3, 10), 0.5)
    np.testing.assert_allclose(cp.asnumpy(y), ref_y, rtol=1e-12)
    np.testing.assert_allclose(cp.asnumpy(dgelu), ref_d, rtol=1e-12)


# ------------------------------------------------------------ the API snapshot

def test_the_snapshot_matches_the_installed_cupy():
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed: the snapshot cannot be "
                                              "compared (pip install -e .[test] on Linux x86_64 "
                                              "installs it)")
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_snapshot", os.path.join(HERE, "cupy_api", "make_snapshot.py"))
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    live = make.snapshot()
    with open(os.path.join(HERE, "cupy_api", "cupy_api.json")) as f:
        import json
        saved = json.load(f)
    assert saved["cupy_version"] == cupy.__version__, (
        f"the snapshot is of CuPy {saved['cupy_version']}, {cupy.__version__} is installed: "
        f"run python tests/cupy_api/make_snapshot.py")
    assert live == json.loads(json.dumps(saved)), "CuPy's API differs from the snapshot: remake it"


def test_every_cupy_name_minivit_uses_is_in_the_snapshot():
    """Every `xp.NAME` in minivit's code names a real cupy function (or an ndarray method)."""
    import re
    names = set()
    for folder, _, files in os.walk(os.path.dirname(minivit.__file__)):
        for file in files:
            if file.endswith(".py"):
                names |= set(re.findall(r"\bxp\.(\w+)", open(os.path.join(folder, file)).read()))
    assert {"matmul", "fuse", "concatenate"} <= names         # the engine's and the fast path's too
    missing = sorted(n for n in names if n not in cupy_strict.API_FUNCTIONS)
    assert not missing, f"not in real CuPy: {missing}"


# -------------------------------------------- host arrays planted in device code

def test_a_host_drop_path_mask_fails_the_suite(cp, monkeypatch):
    import test_gradcheck                     # tests/engine/test_gradcheck.py
    plant(monkeypatch, StepDraws, "sample",
          "masks = to_device(kept * scale, xp, dtype)[..., None, None]",
          "masks = (kept * scale).astype(dtype)[..., None, None]")
    with pytest.raises(TypeError, match="NumPy array"):
        test_gradcheck.test_model_gradcheck_with_stochastic_depth("cupy")


def test_a_host_erasing_mask_fails_the_suite(cp, monkeypatch):
    import test_augment                       # tests/machinery/test_augment.py
    plant(monkeypatch, augment, "random_erase", "xp.asarray(mask)[:, None]", "mask[:, None]")
    with pytest.raises(TypeError, match="NumPy array"):
        test_augment.test_random_erase_boxes("cupy")


def test_host_labels_in_evaluate_fail_the_suite(cp, monkeypatch, tmp_path):
    import test_resume                        # tests/machinery/test_resume.py
    plant(monkeypatch, evaluate, "evaluate_views", "y = to_host(loader.y)", "y = loader.y")
    with pytest.raises(TypeError, match="NumPy array"):
        test_resume.test_a_run_stopped_between_epochs_resumes_to_the_same_weights(tmp_path, "cupy")


# ------------------------------------------------------------ the launch budget

# launches a step (loader to EMA) and syncs, by preset: the default's and the seed's
# (without Muon) within 350, the hybrid's (Muon) within 450, its Muon step within 40
BUDGETS = {"default": 350, "seed": 350, "hybrid": 450}
BUDGET_SYNCS, BUDGET_MUON = 0, 40


@pytest.mark.parametrize("preset", sorted(BUDGETS))
def test_one_training_step_within_the_launch_budget(cp, preset):
    """The loader's batch + forward + cross-entropy + backward + NaN guard + clipping +
    the optimizer's step of the preset's ViT at batch 80, as the training loop runs it
    (benchmarks/launch_count.py), counted by real CuPy's rules: within its budget of
    kernel launches and copies, no host sync; Muon's step (the hybrid's) one stacked
    iteration for all 25 matrices."""
    import launch_count
    from minivit.config import TrainConfig
    counts = launch_count.count_step(cp, TrainConfig.from_preset(preset).model_config(), batch=80,
                                     steps=2, preset=preset)
    total_ops = sum(ops for ops, _ in counts.values())
    total_syncs = sum(syncs for _, syncs in counts.values())
    assert total_ops <= BUDGETS[preset], counts
    assert total_syncs <= BUDGET_SYNCS, counts
    if preset == "hybrid":
        assert counts["optimizer"][0] <= BUDGET_MUON, counts


def test_the_gpus_muon_step_launches_the_same_for_any_number_of_matrices(cp):
    """fast.Muon on the GPU: every matrix through one stack, so a step's launches do not
    grow with the model's depth (the engine's Muon with its AdamW: 313 for the hybrid's 25)."""
    from minivit.config import TrainConfig
    from minivit.run import make_optimizer
    launches = []
    for depth in (1, 4):
        cfg = TrainConfig.from_preset("hybrid", depth=depth)
        model = minivit.ViT(cfg.model_config(), backend="cupy")
        opt = make_optimizer(cfg, model)
        opt.step()
        before = cupy_strict.COUNTS.snapshot()
        opt.step()
        after = cupy_strict.COUNTS.snapshot()
        launches.append((after[0] - before[0], after[1] - before[1]))
    assert launches[0] == launches[1] and launches[0][0] <= BUDGET_MUON and launches[0][1] == 0, launches


def test_the_training_loop_reads_the_device_only_when_it_prints(cp, tmp_path):
    """Between two progress reads (every 10 steps and at the epoch's end) a training step
    never waits for the device: no sync, augmentation and regularizers included."""
    from minivit.config import TrainConfig
    from minivit.train import train
    syncs = []
    cfg = TrainConfig.from_preset("sample", epochs=1, embed_dim=16, depth=2, num_heads=2,
                                  batch_size=16, limit_train=400, drop_path=0.1, mixup=0.5,
                                  cutmix=0.5, random_erase=0.5, randaugment=1, ema=0.9)
    train(cfg, out=tmp_path / "run", backend="cupy", progress=True, plots=False,
          log=lambda *a: None, on_step=lambda step: syncs.append(cupy_strict.COUNTS.syncs))
    per_step = np.diff(syncs)                         # syncs between two steps' callbacks
    after = np.arange(1, len(syncs))                  # ... after this step's callback
    assert len(syncs) == 22
    reads = after % 10 == 0                           # the reads after steps 10 and 20
    assert (per_step[~reads] == 0).all(), per_step
    assert (per_step[reads] > 0).all()                # the NaN check and the progress bar
