"""Configurations: the model's (ViTConfig) and the training run's (TrainConfig, which
builds on it), with every check in one place and the presets.

Each field says in its metadata what values it takes ("range" or "choices") and what it
means ("help"); `validate()` and the command line's options (options.py) both come from that,
so a field is described once.

    cfg = TrainConfig.from_preset("sample", epochs=3)
    cfg.model_config()          # the ViTConfig part
"""

import dataclasses
import math
from dataclasses import dataclass, field

from . import layers

DTYPES = ("float32", "float64")
POOLS = ("cls", "mean", "seq")
STEM_INITS = ("random", "whiten")

# range name -> (test, what a value must be)
RANGES = {
    "positive_int": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "nonneg_int": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "positive": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "nonneg": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "fraction": (lambda v: _is_number(v) and 0 <= v < 1, "in [0, 1)"),
    "probability": (lambda v: _is_number(v) and 0 <= v <= 1, "in [0, 1]"),
    "magnitude": (lambda v: _is_number(v) and 0 <= v <= 10, "in [0, 10]"),
}


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool) or type(v).__name__.startswith(("int", "uint"))


def _is_number(v):
    return (_is_int(v) or isinstance(v, float)) and v == v and abs(v) != float("inf")


def range_problem(value, f):
    """None when value lies in the range field f asks for, else "must be ...". """
    if "range" not in f.metadata:
        return None
    test, what = RANGES[f.metadata["range"]]
    return None if test(value) else f"must be {what}"


def _field(default, range=None, choices=None, help=None, parse=None):
    meta = {k: v for k, v in (("range", range), ("choices", choices), ("help", help),
                              ("parse", parse)) if v is not None}
    return field(default=default, metadata=meta)


def parse_duration(text):
    """"30m", "90s", "1.5h", "1800" (seconds) -> seconds, or ValueError."""
    text = str(text).strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1:], None)
    value = float(text[:-1] if scale else text)
    if not value == value or value < 0 or value == float("inf"):
        raise ValueError(f"not a duration: {text!r}")
    return value * (scale or 1)


@dataclass
class ViTConfig:
    """Everything that fixes the network's shape and function (saved in checkpoints)."""
    img_size: int = _field(32, "positive_int", help="image height and width")
    patch_size: int = _field(4, "positive_int", help="patch height and width")
    in_chans: int = _field(3, "positive_int", help="image channels")
    embed_dim: int = _field(192, "positive_int", help="token width D")
    depth: int = _field(6, "positive_int", help="transformer blocks")
    num_heads: int = _field(3, "positive_int", help="attention heads (must divide embed_dim)")
    mlp_ratio: float = _field(4.0, "positive", help="MLP hidden width / embed_dim")
    num_classes: int = _field(10, "positive_int", help="classes")
    dtype: str = _field("float32", choices=DTYPES, help="floating-point precision")
    gelu: str = _field("exact", choices=tuple(layers.GELUS), help="GELU exact (erf) or tanh")
    drop_path: float = _field(0.0, "fraction", help="stochastic depth rate of the last block "
                              "(block l: rate * l / (depth - 1))")
    pool: str = _field("cls", choices=POOLS, help="the head reads the class token, the "
                       "mean of the patch tokens, or their sum weighted by a learned softmax "
                       "(seq: CCT's sequence pooling)")
    stem_channels: int = _field(0, "nonneg_int", help="a 3x3 conv + GELU stem with this many "
                                "channels before the patch embedding (0: none, as SimpleViT)")
    stem_stride: int = _field(1, "positive_int", help="the stem's stride")
    stem_layers: int = _field(1, "positive_int", help="3x3 convs in the stem, each + GELU: "
                              "the first gives stem_channels, each later one doubles the "
                              "channels at stride 2")

    def validate(self):
        """Raise ValueError naming the first bad field and how to fix it; returns self."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            problem = range_problem(value, f)
            if problem:
                raise ValueError(f"{f.name} {problem}, got {value!r}")
            if "choices" in f.metadata and value not in f.metadata["choices"]:
                raise ValueError(f"unknown {f.name} {value!r}: use one of "
                                 f"{', '.join(f.metadata['choices'])}")
        if self.img_size % self.stem_reduction or self.grid_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not divisible by patch_size "
                             f"{self.patch_size}" + (f" times the stem's reduction "
                                                     f"{self.stem_reduction}"
                                                     if self.stem_reduction > 1 else "")
                             + ": choose a patch size that divides the image size (e.g. 4 for 32)")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads "
                             f"{self.num_heads}: each head gets embed_dim / num_heads channels")
        if self.hidden < 1:
            raise ValueError(f"mlp_ratio {self.mlp_ratio} leaves the MLP no hidden units")
        return self

    @property
    def stem_convs(self):
        """The stem's convs, first to last, as (parameter prefix, in channels, out
        channels, stride): stem.conv, stem.conv2, ..."""
        if not self.stem_channels:
            return []
        out = [self.stem_channels * 2 ** i for i in range(self.stem_layers)]
        return [("stem.conv" + (str(i + 1) if i else ""), c_in, c_out,
                 self.stem_stride if i == 0 else 2)
                for i, (c_in, c_out) in enumerate(zip([self.in_chans] + out, out))]

    @property
    def stem_reduction(self):
        """How many times smaller the stem's output is than the image (1: no stem)."""
        return math.prod(s for *_, s in self.stem_convs)

    @property
    def side_unit(self):
        """Image sides must be multiples of this: one patch of the stem's output."""
        return self.stem_reduction * self.patch_size

    def takes_side(self, side):
        """Whether side x side images fit: at most img_size and a whole number of patches
        (smaller ones get an area-resized position embedding: progressive resizing)."""
        return side <= self.img_size and side % self.side_unit == 0

    @property
    def grid_size(self):
        """Height and width of what the patch embedding cuts: the image, or the stem's output."""
        return self.img_size // self.stem_reduction

    @property
    def num_patches(self):
        return (self.grid_size // self.patch_size) ** 2

    @property
    def patch_in_chans(self):
        """Channels the patch embedding reads: the image's, or the stem's last conv's."""
        return self.stem_convs[-1][2] if self.stem_channels else self.in_chans

    @property
    def hidden(self):
        """The MLP's hidden width F."""
        return int(self.embed_dim * self.mlp_ratio)

    @classmethod
    def from_dict(cls, d):
        """The configuration in a saved dict (other keys, e.g. a training config's, are
        ignored; missing ones take their defaults)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def model_config(self):
        """Only the ViTConfig part (of a TrainConfig, say)."""
        return ViTConfig.from_dict(dataclasses.asdict(self))


@dataclass
class TrainConfig(ViTConfig):
    """A training run on CIFAR-10: the model's fields plus the recipe."""
    preset: str = _field("default", help="the preset these values started from")
    # optimization
    optimizer: str = _field("adamw", choices=("adam", "adamw", "muon"), help="Adam, AdamW (decoupled "
                            "decay), or Muon (orthogonalized updates of the blocks' matrices and "
                            "the patch embedding, AdamW for the rest)")
    lr: float = _field(1e-3, "positive", help="peak learning rate")
    weight_decay: float = _field(0.05, "nonneg", help="adamw: decoupled, on weight matrices and conv kernels; "
                                 "adam: an L2 term on every parameter")
    betas: tuple = (0.9, 0.999)
    batch_size: int = _field(128, "positive_int", help="images per step")
    epochs: int = _field(50, "positive_int", help="passes over the training images (ignored "
                         "with a time budget)")
    time_budget: float = _field(0.0, "nonneg", help="train for this much training time "
                                "instead of a number of epochs, e.g. 30m, 90s, 1h (0: off); "
                                "warmup and decay follow the clock", parse="duration")
    warmup_epochs: float = _field(5.0, "nonneg", help="linear warmup, in epochs")
    warmup_fraction: float = _field(0.05, "fraction", help="with a time budget: the share of it "
                                    "spent warming up")
    schedule: str = _field("cosine", choices=("cosine", "linear", "constant"),
                           help="after warmup: cosine or linear decay to min_lr, or constant")
    min_lr: float = _field(1e-5, "nonneg", help="where the decay ends")
    clip_grad: float = _field(1.0, "nonneg", help="global gradient-norm cap (0: off)")
    label_smoothing: float = _field(0.1, "fraction", help="share of the target spread over all classes")
    stem_init: str = _field("random", choices=STEM_INITS, help="the stem's first conv: random "
                            "(LeCun normal) or whiten (whitening filters of the training "
                            "images' 3x3 patches, whiten.py)")
    # data
    augment: bool = _field(True, help="random crop (padding 4) + horizontal flip")
    alternate_flip: bool = _field(False, help="the flip of augment alternates: epoch 1 mirrors a "
                                  "random half of the images, even epochs the other half, odd "
                                  "epochs the first half again (airbench)")
    randaugment: int = _field(0, "nonneg_int", help="RandAugment: operations per image (0: off)")
    randaugment_magnitude: float = _field(9.0, "magnitude", help="their strength, 0..10")
    mixup: float = _field(0.0, "nonneg", help="mixup Beta alpha (0: off)")
    cutmix: float = _field(0.0, "nonneg", help="cutmix Beta alpha (0: off)")
    random_erase: float = _field(0.0, "probability", help="probability of erasing a box per image")
    ema: float = _field(0.0, "fraction", help="decay of a weight average used for evaluation (0: off)")
    low_res: float = _field(0.0, "fraction", help="progressive resizing: the share of training "
                            "(of the time budget, or of the epochs) run first on images "
                            "area-resized to low_res_size (0: off)")
    low_res_size: int = _field(16, "positive_int", help="the image side of that first part")
    mid_res: float = _field(0.0, "fraction", help="progressive resizing's middle stage: the share "
                            "of training after the low_res one run on mid_res_size images (0: off)")
    mid_res_size: int = _field(24, "positive_int", help="the image side of that middle stage")
    val_fraction: float = _field(0.1, "fraction", help="share of training images held out")
    limit_train: int = _field(0, "nonneg_int", help="use only the first N training images (0: all)")
    eval_batch_size: int = _field(500, "positive_int", help="images per evaluation batch")
    checkpoint_minutes: float = _field(10.0, "nonneg", help="inside an epoch, also save "
                                       "checkpoint.npz every this many minutes (0: at epoch ends only)")
    seed: int = _field(0, "nonneg_int", help="weights, split, order and every random draw")

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
    # (CCT), which scored above the class token at 5 minutes and at 30 on a slow machine.
    "hybrid": dict(embed_dim=96, depth=6, num_heads=3, mlp_ratio=2.0, patch_size=4, pool="seq",
                   stem_channels=24, stem_stride=1, stem_init="whiten", optimizer="muon",
                   batch_size=128, lr=2e-3, epochs=20, warmup_epochs=1.0, warmup_fraction=0.05,
                   schedule="linear", min_lr=0.0, low_res=0.4, low_res_size=16, mid_res=0.3,
                   mid_res_size=24),
    # A small ViT for a short run on a CPU (the shipped sample trains in under a minute).
    "sample": dict(embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0, batch_size=64, epochs=15,
                   warmup_epochs=1.0, lr=2e-3),
}
