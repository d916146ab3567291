"""A short CPU ablation of the training recipe: the seed recipe, the default recipe, and
the default recipe plus each regularizer, on a small ViT and part of CIFAR-10.

    python benchmarks/ablation_cpu.py --data PATH/TO/cifar-10-batches-py [--limit 5000 --epochs 12]

Every run uses the same model, data, split and seed; the table reports each run's best
validation accuracy (the selection metric) and the test accuracy of that epoch's weights.
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from minivit.config import TrainConfig  # noqa: E402
from minivit.files import read_jsonl  # noqa: E402
from minivit.train import train  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--limit", type=int, default=5000, help="training images used (10%% held out)")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--only", nargs="*", help="run only these variants")
    ap.add_argument("--json", default=None, help="append each result as a JSON line here")
    args = ap.parse_args(argv)

    small = dict(embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0, batch_size=64,
                 limit_train=args.limit, epochs=args.epochs)
    variants = {
        "seed recipe": TrainConfig.from_preset("seed", **small),
        "default recipe": TrainConfig.from_preset("default", **small, lr=2e-3, warmup_epochs=1.0),
        "+ drop path 0.1": TrainConfig.from_preset("default", **small, lr=2e-3, warmup_epochs=1.0,
                                                   drop_path=0.1),
        "+ mixup 0.8 / cutmix 1.0": TrainConfig.from_preset("default", **small, lr=2e-3, warmup_epochs=1.0,
                                                            mixup=0.8, cutmix=1.0),
        "+ random erasing 0.25": TrainConfig.from_preset("default", **small, lr=2e-3, warmup_epochs=1.0,
                                                         random_erase=0.25),
        "+ EMA 0.99": TrainConfig.from_preset("default", **small, lr=2e-3, warmup_epochs=1.0, ema=0.99),
        "+ mean pooling": TrainConfig.from_preset("default", **small, lr=2e-3, warmup_epochs=1.0,
                                                  pool="mean"),
        "+ RandAugment 2 ops, magnitude 9": TrainConfig.from_preset(
            "default", **small, lr=2e-3, warmup_epochs=1.0, randaugment=2, randaugment_magnitude=9.0),
        "+ RandAugment 2 ops, magnitude 5": TrainConfig.from_preset(
            "default", **small, lr=2e-3, warmup_epochs=1.0, randaugment=2, randaugment_magnitude=5.0),
        "+ drop path 0.1 + RandAugment 2/5": TrainConfig.from_preset(
            "default", **small, lr=2e-3, warmup_epochs=1.0, drop_path=0.1, randaugment=2,
            randaugment_magnitude=5.0),
    }

    print(f"{'variant':<28} {'best val acc':>12} {'epoch':>6} {'test acc':>9} {'minutes':>8}")
    for name, cfg in variants.items():
        if args.only and name not in args.only:
            continue
        with tempfile.TemporaryDirectory() as out:
            t0 = time.time()
            summary = train(cfg, data=args.data, out=os.path.join(out, "run"), progress=False,
                            plots=False, log=lambda *a: None)
            best = max(read_jsonl(os.path.join(out, "run", "metrics.jsonl")), key=lambda m: m["val_acc"])
        row = dict(variant=name, best_val_acc=best["val_acc"], best_epoch=best["epoch"],
                   test_acc=summary["test_acc"], test_images=summary["test_images"],
                   minutes=(time.time() - t0) / 60, epochs=cfg.epochs, limit_train=cfg.limit_train)
        print(f"{name:<28} {row['best_val_acc']:>12.4f} {row['best_epoch']:>6} {row['test_acc']:>9.4f} "
              f"{row['minutes']:>8.1f}", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
