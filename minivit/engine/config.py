"""The model's configuration (ViTConfig): every field that fixes the network's shape and
function, with its checks. The training run's configuration (minivit/config.py) builds
on it.

Each field says in its metadata what values it takes ("range" or "choices") and what it
means ("help"); `validate()` and the command line's options both come from that, so a
field is described once: a new field here is a new `minivit train` option.

    cfg = ViTConfig(embed_dim=96, norm="rmsnorm").validate()
"""

import dataclasses
import math
from dataclasses import dataclass, field

from . import layers

DTYPES = ("float32", "float64")
POOLS = ("cls", "mean", "seq")

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


def option_field(default, range=None, choices=None, help=None, parse=None):
    meta = {k: v for k, v in (("range", range), ("choices", choices), ("help", help),
                              ("parse", parse)) if v is not None}
    return field(default=default, metadata=meta)


@dataclass
class ViTConfig:
    """Everything that fixes the network's shape and function (saved in checkpoints)."""
    img_size: int = option_field(32, "positive_int", help="image height and width")
    patch_size: int = option_field(4, "positive_int", help="patch height and width")
    in_chans: int = option_field(3, "positive_int", help="image channels")
    embed_dim: int = option_field(192, "positive_int", help="token width D")
    depth: int = option_field(6, "positive_int", help="transformer blocks")
    num_heads: int = option_field(3, "positive_int", help="attention heads (must divide embed_dim)")
    mlp_ratio: float = option_field(4.0, "positive", help="MLP hidden width / embed_dim")
    num_classes: int = option_field(10, "positive_int", help="classes")
    dtype: str = option_field("float32", choices=DTYPES, help="floating-point precision")
    gelu: str = option_field("exact", choices=tuple(layers.GELUS), help="GELU exact (erf) or tanh")
    norm: str = option_field("layernorm", choices=tuple(layers.NORMS), help="the blocks' and the "
                             "head's normalization: LayerNorm, or RMSNorm (no mean, no bias)")
    drop_path: float = option_field(0.0, "fraction", help="stochastic depth rate of the last block "
                                    "(block l: rate * l / (depth - 1))")
    pool: str = option_field("cls", choices=POOLS, help="the head reads the class token, the "
                             "mean of the patch tokens, or their sum weighted by a learned softmax "
                             "(seq: CCT's sequence pooling)")
    stem_channels: int = option_field(0, "nonneg_int", help="a 3x3 conv + GELU stem with this many "
                                      "channels before the patch embedding (0: none, as SimpleViT)")
    stem_stride: int = option_field(1, "positive_int", help="the stem's stride")
    stem_layers: int = option_field(1, "positive_int", help="3x3 convs in the stem, each + GELU: "
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
