"""The training run's configuration (TrainConfig: the model's fields of engine/config.py
plus the recipe) and the presets.

    cfg = TrainConfig.from_preset("sample", epochs=3)
    cfg.model_config()          # the ViTConfig part
"""

import dataclasses
from dataclasses import dataclass

from .engine.config import RANGES, ViTConfig, option_field, range_problem  # noqa: F401 (options.py reads them here)

ENGINES = ("fast", "reference")
STEM_INITS = ("random", "whiten")


def parse_duration(text):
    """"30m", "90s", "1.5h", "1800" (seconds) -> seconds, or ValueError."""
    text = str(text).strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1:], None)
    value = float(text[:-1] if scale else text)
    if not value == value or value < 0 or value == float("inf"):
        raise ValueError(f"not a duration: {text!r}")
    return value * (scale or 1)


@dataclass
class TrainConfig(ViTConfig):
    """A training run on CIFAR-10: the model's fields plus the recipe."""
    preset: str = option_field("default", help="the preset these values started from")
    engine: str = option_field("fast", choices=ENGINES, help="what runs the model's forward and "
                               "backward: the fast path (checked against the engine before the first "
                               "step), or the engine's reference code as it reads")
    layers: str = option_field("", help="a file of your own backward functions (`minivit exercises "
                               "new FILE`): the engine trains with each one that is right in place of "
                               "its own, after checking them all (a wrong one stops the run before its "
                               "first step); implies --engine reference")
    # optimization
    optimizer: str = option_field("adamw", choices=("adam", "adamw", "muon"), help="Adam, AdamW (decoupled "
                                  "decay), or Muon (orthogonalized updates of the blocks' matrices and "
                                  "the patch embedding, AdamW for the rest)")
    lr: float = option_field(1e-3, "positive", help="peak learning rate")
    weight_decay: float = option_field(0.05, "nonneg", help="adamw: decoupled, on weight matrices and conv kernels; "
                                       "adam: an L2 term on every parameter")
    betas: tuple = (0.9, 0.999)
    batch_size: int = option_field(128, "positive_int", help="images per step")
    epochs: int = option_field(50, "positive_int", help="passes over the training images (ignored "
                               "with a time budget)")
    time_budget: float = option_field(0.0, "nonneg", help="train for this much training time "
                                      "instead of a number of epochs, e.g. 30m, 90s, 1h (0: off); "
                                      "warmup and decay follow the clock", parse="duration")
    warmup_epochs: float = option_field(5.0, "nonneg", help="linear warmup, in epochs")
    warmup_fraction: float = option_field(0.05, "fraction", help="with a time budget: the share of it "
                                          "spent warming up")
    schedule: str = option_field("cosine", choices=("cosine", "linear", "constant"),
                           help="after warmup: cosine or linear decay to min_lr, or constant")
    min_lr: float = option_field(1e-5, "nonneg", help="where the decay ends")
    clip_grad: float = option_field(1.0, "nonneg", help="global gradient-norm cap (0: off)")
    label_smoothing: float = option_field(0.1, "fraction", help="share of the target spread over all classes")
    stem_init: str = option_field("random", choices=STEM_INITS, help="the stem's first conv: random "
                                  "(LeCun normal) or whiten (whitening filters of the training "
                                  "images' 3x3 patches, whiten.py)")
    # data
    augment: bool = option_field(True, help="random crop (padding 4) + horizontal flip")
    alternate_flip: bool = option_field(False, help="the flip of augment alternates: epoch 1 mirrors a "
                                        "random half of the images, even epochs the other half, odd "
                                        "epochs the first half again (airbench)")
    randaugment: int = option_field(0, "nonneg_int", help="RandAugment: operations per image (0: off)")
    randaugment_magnitude: float = option_field(9.0, "magnitude", help="their strength, 0..10")
    mixup: float = option_field(0.0, "nonneg", help="mixup Beta alpha (0: off)")
    cutmix: float = option_field(0.0, "nonneg", help="cutmix Beta alpha (0: off)")
    random_erase: float = option_field(0.0, "probability", help="probability of erasing a box per image")
    ema: float = option_field(0.0, "fraction", help="decay of a weight average used for evaluation (0: off)")
    low_res: float = option_field(0.0, "fraction", help="progressive resizing: the share of training "
                                  "(of the time budget, or of the epochs) run first on images "
                                  "area-resized to low_res_size (0: off)")
    low_res_size: int = option_field(16, "positive_int", help="the image side of that first part")
    mid_res: float = option_field(0.0, "fraction", help="progressive resizing's middle stage: the share "
                                  "of training after the low_res one run on mid_res_size images (0: off)")
    mid_res_size: int = option_field(24, "positive_int", help="the image side of that middle stage")
    val_fraction: float = option_field(0.1, "fraction", help="share of training images held out")
    limit_train: int = option_field(0, "nonneg_int", help="use only the first N training images (0: all)")
    eval_batch_size: int = option_field(500, "positive_int", help="images per evaluation batch")
    checkpoint_minutes: float = option_field(10.0, "nonneg", help="inside an epoch, also save "
                                             "checkpoint.npz every this many minutes (0: at epoch ends only)")
    seed: int = option_field(0, "nonneg_int", help="weights, split, order and every random draw")

    def validate(self):
        super().validate()
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}: choose one of {', '.join(PRESETS)}")
        unit = self.side_unit
        for share, name in ((self.low_res, "low_res_size"), (self.mid_res, "mid_res_size")):
            side = getattr(self, name)
            if share and not self.takes_side(side):
                raise ValueError(f"{name} {side} does not fit the model: it must be at most "
                                 f"img_size {self.img_size} and a multiple of {unit} (patch_size "
                                 f"times the stem's reduction), e.g. "
                                 f"{max(unit, self.img_size // 2 // unit * unit)}")
        if self.low_res + self.mid_res >= 1:
            raise ValueError(f"low_res {self.low_res} + mid_res {self.mid_res} leave no training on "
                             f"full-size images: their sum must be below 1")
        if self.stem_init == "whiten" and (not self.stem_channels or self.stem_channels % 2):
            raise ValueError(f"stem_init whiten needs a stem with an even number of channels, got "
                             f"stem_channels {self.stem_channels}: e.g. --stem-channels 24")
        if self.layers and self.engine != "reference":
            raise ValueError(f"layers {self.layers!r} trains your functions in the engine itself: "
                             f"use engine 'reference' (--engine reference; the fast path has its "
                             f"own kernels)")
        if not (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        return self

    @classmethod
    def from_dict(cls, d):
        """A saved training configuration (JSON turned the betas into a list)."""
        cfg = super().from_dict(d)
        return dataclasses.replace(cfg, betas=tuple(cfg.betas))

    @classmethod
    def from_preset(cls, name, **overrides):
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides, "preset": name})


PRESETS = {
    # The reference post's recipe: Adam 3e-4, batch 80, 30 epochs, nothing else.
    "seed": dict(optimizer="adam", lr=3e-4, weight_decay=0.0, batch_size=80, epochs=30,
                 warmup_epochs=0.0, schedule="constant", clip_grad=0.0, label_smoothing=0.0,
                 augment=False),
    # The same ViT with a modern recipe: AdamW with decay on weight matrices and conv
    # kernels, warmup + cosine, label smoothing, gradient clipping, crop + flip augmentation.
    "default": dict(),
    # A small hybrid ViT for CPU time budgets (`--time-budget 30m`): a 3x3 conv stem (24
    # channels, GELU) at full resolution, started as a whitening of image patches, then 4x4
    # patches: 64 tokens of width 96; 6 blocks of 3 heads; Muon for the blocks' matrices and
    # AdamW for the rest, 2e-3, linear decay to 0 after a 5% warmup, batch 128, crop + flip;
    # progressive resizing: 40% of training on 16x16 images (16 tokens a step), 30% on
    # 24x24 (36 tokens), the rest on 32x32; the head reads the tokens by sequence pooling
    # (CCT; benchmarks/ACCURACY.md has the runs that chose each setting).
    "hybrid": dict(embed_dim=96, depth=6, num_heads=3, mlp_ratio=2.0, patch_size=4, pool="seq",
                   stem_channels=24, stem_stride=1, stem_init="whiten", optimizer="muon",
                   batch_size=128, lr=2e-3, epochs=20, warmup_epochs=1.0, warmup_fraction=0.05,
                   schedule="linear", min_lr=0.0, low_res=0.4, low_res_size=16, mid_res=0.3,
                   mid_res_size=24),
    # A small ViT for a short run on a CPU (the shipped sample trains in under a minute).
    "sample": dict(embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0, batch_size=64, epochs=15,
                   warmup_epochs=1.0, lr=2e-3),
}
