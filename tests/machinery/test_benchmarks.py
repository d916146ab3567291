"""The scripts of benchmarks/ run and print their figures (a tiny model; nothing is judged on
speed). (fault_injection.py: test_kill.py; launch_count.py: tests/gpu/test_cupy_strict.py.)"""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_train_step_benchmark_prints_its_figures():
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "train_step.py"), "--steps", "1",
           "--rounds", "2", "--warmup", "0", "--batch-size", "4", "--embed-dim", "12", "--depth", "1",
           "--num-heads", "2", "--no-torch", "--memory", "--scaling", "--scaling-batch", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert len(re.findall(r"^round \d: minivit \d+\.\d img/s$", out, re.M)) == 2
    assert re.search(r"^machine: .+; float32 GEMM reference \d+\.\d GFLOP/s$", out, re.M)
    assert re.search(r"^BLAS: ", out, re.M)
    assert re.search(r"minivit \(numpy, \d+ threads?\): +\d+\.\d ms/step +\d+\.\d images/s", out)
    assert re.search(r"peak memory minivit: \d+ MiB", out)
    rows = re.findall(r"^ +(\d+) +(\d+) +(\d+) +\d+\.\d +\d+\.\d+$", out, re.M)
    assert [int(r[2]) for r in rows] == [17, 65, 257, 1025]


def test_accuracy_against_time_prints_each_run_and_draws_them(tmp_path):
    import json
    for name, accs in (("fast", [0.3, 0.5]), ("slow", [0.2])):
        run = tmp_path / name
        run.mkdir()
        lines = [dict(epoch=i + 1, train_seconds=60.0 * (i + 1), val_acc=a) for i, a in enumerate(accs)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    (tmp_path / "fast" / "summary.json").write_text(json.dumps(dict(test_acc=0.512, test_images=1017)))
    script = os.path.join(ROOT, "benchmarks", "accuracy_vs_time.py")
    out = tmp_path / "curves.png"
    proc = subprocess.run([sys.executable, script, str(tmp_path / "fast"), str(tmp_path / "slow"),
                           "--labels", "A", "B", "--out", str(out)], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr
    assert "A: 51.2% on 1017 test images\n  validation: 1.0 min 30.0%  2.0 min 50.0%" in proc.stdout
    assert "B: no test accuracy yet\n  validation: 1.0 min 20.0%" in proc.stdout
    try:
        import matplotlib  # noqa: F401
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    except ImportError:
        assert "matplotlib is not installed" in proc.stdout
    proc = subprocess.run([sys.executable, script, str(tmp_path / "fast"), "--labels", "A", "B"],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 2 and "1 runs but 2 labels: give one label per run" in proc.stderr


def test_test_time_views_rebuild_the_validation_split_and_score_each_view_set(tmp_path):
    """On a tiny run: the one-view validation figure of final.npz is the run's last logged
    validation accuracy (so the split is rebuilt as training made it), and the one-view
    test figure of best.npz the test accuracy the run reported."""
    import json
    from minivit import cli
    run = tmp_path / "run"
    assert cli.main(["train", "--epochs", "2", "--out", str(run), "--no-plots", "--no-progress",
                     "--embed-dim", "16", "--depth", "1", "--num-heads", "2", "--mlp-ratio", "2",
                     "--batch-size", "32", "--limit-train", "200"]) == 0
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    summary = json.loads((run / "summary.json").read_text())
    script = os.path.join(ROOT, "benchmarks", "test_time_views.py")
    figures = {}
    for name in ("final.npz", "best.npz"):
        proc = subprocess.run([sys.executable, script, str(run), "--checkpoint", name],
                              capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
        assert proc.returncode == 0, proc.stderr
        assert "one     flip    crops" in proc.stdout
        row = proc.stdout.splitlines()[-1]
        assert row.endswith(f"(20 validation, {summary['test_images']} test images)")
        figures[name] = [float(f) / 100 for f in re.findall(r"(\d+\.\d\d)%", row)]
        assert len(figures[name]) == 6
    assert figures["final.npz"][0] == pytest.approx(last["val_acc"], abs=5e-5)
    assert figures["best.npz"][3] == pytest.approx(summary["test_acc"], abs=5e-5)
    proc = subprocess.run([sys.executable, script, str(tmp_path)], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 2 and "give the folder of a finished `minivit train` run" in proc.stderr


def test_roofline_counts_every_product_of_a_step_and_prints_its_figures():
    """The stand-in's count of a step's matmul FLOPs equals the count by hand for a plain
    ViT (no stem, class-token-only last block, no image gradient, Adam: no products), and
    the script prints one row per image size; Muon's products are counted as the CPU runs
    them (one stack a shape, not the GPU's padded stack)."""
    code = """
import sys
sys.path[:0] = [{bench!r}, {tests!r}]
import roofline
from minivit.config import TrainConfig
cfg = TrainConfig.from_preset("seed", embed_dim=12, depth=2, num_heads=3)
c, B = cfg.model_config(), 4
model, opt, shapes = roofline.count_flops(cfg, B, 32)
D, F, K, P = c.embed_dim, c.hidden, c.num_classes, 64
N = P + 1
patch = P * D * 48 * 2                                      # 4x4x3 patches -> D
full = N * D * 3 * D * 2 + 2 * N * N * D * 2 + N * D * D * 2 + 2 * N * D * F * 2
last = N * D * 3 * D * 2 + 2 * N * D * 2 + D * D * 2 + 2 * D * F * 2   # the class token's row
forward = patch + full + last + D * K * 2
# backward: dW and dx of every product (attention: 4 products for 2), no dx of the patches
print(model == B * (3 * forward - patch), opt == 0, len(shapes))
# Muon: the CPU's schedule, one stack a shape [G, m, n] (m <= n after turning), each of its
# 5 Newton-Schulz steps 2 m m n (the Gram) + 2 m m m (its square) + 2 m m n; no padding
hybrid = TrainConfig.from_preset("hybrid", embed_dim=12, depth=1, num_heads=3)
_, opt, _ = roofline.count_flops(hybrid, B, 16)
muon = roofline.make_optimizer(hybrid, roofline.minivit.ViT(hybrid.model_config()))
by_hand = sum(len(ps) * 5 * (4 * min(s) ** 2 * max(s) + 2 * min(s) ** 3) for s, ps in muon.stacks.items())
print(opt == by_hand)
""".format(bench=os.path.join(ROOT, "benchmarks"), tests=os.path.join(ROOT, "tests"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True", "41", "True"]
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "roofline.py"), "--embed-dim", "12",
           "--depth", "1", "--batch-size", "4", "--steps", "1", "--rounds", "1", "--warmup", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr
    rows = re.findall(r"^ +(\d+) +(\d+) +(\d+\.\d+) +(\d+\.\d+)( +\d+\.\d+){7}$", proc.stdout, re.M)
    assert [(int(r[0]), int(r[1])) for r in rows] == [(16, 17), (24, 37), (32, 65)]   # hybrid stages
    assert all(float(r[3]) > 0 for r in rows)              # Muon's products are counted


def test_roofline_times_the_same_products_on_pytorch():
    pytest.importorskip("torch")
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "roofline.py"), "--preset", "default",
           "--embed-dim", "12", "--depth", "1", "--batch-size", "4", "--sizes", "32", "--steps", "1",
           "--rounds", "1", "--warmup", "0", "--torch"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr
    rows = re.findall(r"^ +32 +65( +\d+\.\d+){10}$", proc.stdout, re.M)
    assert len(rows) == 1 and "torch GEMMs ms" in proc.stdout


def test_blas_shapes_times_each_product_of_a_step_on_every_blas_found():
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "blas_shapes.py"), "--preset", "sample",
           "--embed-dim", "16", "--depth", "1", "--batch-sizes", "4", "--sizes", "32", "--rounds", "1",
           "--top", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert re.search(r"^preset sample; libraries: openblas", out, re.M)
    assert re.search(r"^batch 4, 32px: \d+ products of \d+ shapes, \d+\.\d+ GFLOP; GEMM reference "
                     r"\d+\.\d GFLOP/s", out, re.M)
    assert len(re.findall(r"^ +\(\d[\d, ]*\) +\(\d[\d, ]*\) +\d+ +\d\.\d{4}( +\d+\.\d)+$", out, re.M)) == 3
    assert re.search(r"^step's products, total ms \(GFLOP/s\): openblas \d+\.\d \(\d+\.\d\)", out, re.M)


def test_step_phases_prints_where_a_steps_time_goes():
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "step_phases.py"), "--preset", "sample",
           "--steps", "2", "--batch-size", "8", "--top", "4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert re.search(r"^train_step: \d+\.\d ms a step, \d+\.\d images/s", out, re.M)
    for phase in ("runner.py:forward", "runner.py:backward", "optim.py:step"):
        assert re.search(rf"^  {re.escape(phase)} +\d+\.\d ms +\d+\.\d%$", out, re.M), phase
    assert len(re.findall(r"^  \S.* +\d+\.\d ms +\d+\.\d%$", out, re.M)) >= 4 + 3
    assert re.search(r"^between steps \(the loader's next batch, the loop's bookkeeping\): median "
                     r"\d+\.\d ms$", out, re.M)


def test_step_phases_divides_by_the_steps_the_data_held():
    """Asked for more steps than the data holds (the shipped sample's 2,000 images, batch
    256: 8 batches), the per-step figures divide by the steps run, not by --steps."""
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "step_phases.py"), "--preset", "sample",
           "--steps", "50", "--batch-size", "256", "--top", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr
    steps = int(re.search(r"^preset sample, batch 256, (\d+) steps", proc.stdout, re.M).group(1))
    assert steps in (7, 8)
