"""Validation and test accuracy of finished runs, scored on one view, with flipped copies and on six crops.

    python benchmarks/test_time_views.py runs/hybrid-20261130-071500 runs/... [--checkpoint final.npz] [--data DIR]

For each run folder: rebuild its validation split from the data it trained on (its
config.json's seed, val_fraction and limit_train, as `minivit train` split it), then score
the checkpoint on the validation and the test images under each of evaluate.VIEWS: one
view, the image and its mirror image (`minivit eval --flip`), six shifted and flipped
views (`minivit eval --crops`); each forward pass runs once for all three. One row a run
(the table of ACCURACY.md). The validation figures are what to choose a view set by;
`minivit eval` gives the test figures alone.
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from minivit import checkpoint as ckpt  # noqa: E402
from minivit.config import TrainConfig  # noqa: E402
from minivit.data import Loader  # noqa: E402
from minivit.evaluate import VIEWS, evaluate_views  # noqa: E402
from minivit.files import read_json  # noqa: E402
from minivit.run import make_net, prepare_data  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run folders written by `minivit train`")
    ap.add_argument("--checkpoint", default="final.npz",
                    help="the file of each run to score (default final.npz: its last weights)")
    ap.add_argument("--data", help="the folder the runs trained on (default: the one each run names)")
    args = ap.parse_args(argv)
    for run in args.runs:
        if not (run / args.checkpoint).exists() or not (run / "config.json").exists():
            ap.error(f"no {args.checkpoint} or config.json in {run}: give the folder of a "
                     f"finished `minivit train` run")
    print(f"{'':<32s} {'validation':^26s}   {'test':^26s}")
    print(f"{'run':<32s} " + "   ".join(" ".join(f"{v:>8s}" for v in VIEWS) for _ in range(2)))
    for run in args.runs:
        cfg = TrainConfig.from_dict(read_json(run / "config.json"))
        model, meta = ckpt.load_model(run / args.checkpoint)
        d = prepare_data(cfg, args.data or meta.get("data_arg"))
        net = make_net(cfg, model)[0]         # what the run scored with: its --engine
        scores = []
        for split in ("val", "test"):
            loader = Loader(d[f"x_{split}"], d[f"y_{split}"], cfg.eval_batch_size, model.xp,
                            meta["mean"], meta["std"], dtype=model.config.dtype)
            accuracy = {v: acc for v, (_, acc, _) in evaluate_views(net, loader, views=VIEWS).items()}
            scores.append(" ".join(f"{accuracy[v]:>8.2%}" for v in VIEWS))
        print(f"{str(run)[-32:]:<32s} {'   '.join(scores)}   ({len(d['y_val'])} validation, "
              f"{len(d['y_test'])} test images)", flush=True)


if __name__ == "__main__":
    main()
