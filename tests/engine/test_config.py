"""engine/config.py: ViTConfig's checks, each naming the bad field and the fix (a
ValueError). The training run's configuration: tests/machinery/test_train_config.py."""

import pytest

import minivit


@pytest.mark.parametrize("cfg, message", [
    (dict(img_size=32, patch_size=5), "img_size 32 is not divisible by patch_size 5"),
    (dict(img_size=12, patch_size=4, stem_channels=4, stem_stride=2),
     "img_size 12 is not divisible by patch_size 4 times the stem's reduction 2"),
    (dict(img_size=8, patch_size=3, stem_channels=3, stem_layers=2),
     "img_size 8 is not divisible by patch_size 3 times the stem's reduction 2"),
    (dict(embed_dim=100, num_heads=3), "embed_dim 100 is not divisible by num_heads 3"),
    (dict(dtype="float16"), "unknown dtype 'float16': use one of float32, float64"),
    (dict(depth=0), "depth must be a positive integer, got 0"),
    (dict(num_classes=2.5), "num_classes must be a positive integer, got 2.5"),
    (dict(mlp_ratio=0), "mlp_ratio must be a positive number, got 0"),
    (dict(gelu="relu"), "unknown gelu 'relu': use one of exact, tanh"),
    (dict(pool="max"), "unknown pool 'max': use one of cls, mean, seq"),
    (dict(drop_path=1.0), "drop_path must be in [0, 1), got 1.0"),
    (dict(stem_channels=-1), "stem_channels must be an integer >= 0, got -1"),
])
def test_invalid_configurations_raise_clear_errors(cfg, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[")):
        minivit.ViT(**cfg)
    with pytest.raises(ValueError):
        minivit.ViTConfig(**cfg).validate()


def test_the_stem_and_patch_size_fix_which_image_sides_fit():
    c = minivit.ViTConfig(img_size=32, patch_size=4, stem_channels=8, stem_stride=1, stem_layers=2)
    assert [(name, stride) for name, _, _, stride in c.stem_convs] == [("stem.conv", 1), ("stem.conv2", 2)]
    assert c.stem_reduction == 2 and c.side_unit == 8 and c.num_patches == 16 and c.patch_in_chans == 16
    assert [side for side in range(1, 40) if c.takes_side(side)] == [8, 16, 24, 32]
