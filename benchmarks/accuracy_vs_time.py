"""Validation accuracy against minutes of training, for finished or running run folders.

    python benchmarks/accuracy_vs_time.py runs/hybrid-30m runs/seed-15m \
        --labels "hybrid, 30-min budget" "seed, 15-min budget" --out accuracy_vs_minutes.png

Reads each folder's metrics.jsonl (the training seconds and validation accuracy after
every epoch) and summary.json (the test accuracy, once the run has finished), prints one
table row per run and draws one line per run (benchmarks/accuracy_vs_minutes.png is the
figure of ACCURACY.md).
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from minivit.files import read_json, read_jsonl  # noqa: E402
from minivit.plots import plot_time_curves  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run folders written by `minivit train`")
    ap.add_argument("--labels", nargs="+", help="one label per run (default: the folder names)")
    ap.add_argument("--out", type=Path, help="also draw the curves into this PNG")
    args = ap.parse_args(argv)
    labels = args.labels or [run.name for run in args.runs]
    if len(labels) != len(args.runs):
        ap.error(f"{len(args.runs)} runs but {len(labels)} labels: give one label per run")
    curves = []
    for run, label in zip(args.runs, labels):
        metrics = read_jsonl(run / "metrics.jsonl")
        if not metrics:
            ap.error(f"no metrics.jsonl in {run}: is it a run folder written by `minivit train`?")
        summary = read_json(run / "summary.json") if (run / "summary.json").exists() else {}
        test = (f"{summary['test_acc']:.1%} on {summary['test_images']} test images"
                if "test_acc" in summary else "no test accuracy yet")
        points = "  ".join(f"{m['train_seconds'] / 60:.1f} min {m['val_acc']:.1%}"
                           for m in metrics if m.get("val_acc") is not None)
        print(f"{label}: {test}\n  validation: {points}")
        curves.append((label, metrics))
    if args.out:
        if plot_time_curves(curves, args.out) is not None:
            print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
