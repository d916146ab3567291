"""config.py: TrainConfig's checks (a ValueError naming the field and the fix), the presets."""

import dataclasses

import pytest

from minivit.config import ENGINES, PRESETS, TrainConfig, parse_duration


@pytest.mark.parametrize("over, message", [
    (dict(epochs=0), "epochs must be a positive integer, got 0"), (dict(lr=-1.0), "lr must be a positive number"),
    (dict(optimizer="sgd"), "unknown optimizer 'sgd'"), (dict(patch_size=5), "patch_size 5"),
    (dict(dtype="int8"), "unknown dtype 'int8'"), (dict(label_smoothing=1.0), "label_smoothing"),
    (dict(engine="torch"), "unknown engine 'torch': use one of fast, reference"),
    (dict(low_res=0.5, low_res_size=10), "low_res_size 10 does not fit the model: it must be at "
     "most img_size 32 and a multiple of 4 .patch_size times the stem's reduction., e.g. 16"),
    (dict(low_res=0.5, low_res_size=64), "low_res_size 64 does not fit"),
    (dict(mid_res=0.3, mid_res_size=22), "mid_res_size 22 does not fit"),
    (dict(low_res=0.5, mid_res=0.5), "low_res 0.5 \\+ mid_res 0.5 leave no training on full-size images"),
    (dict(stem_init="whiten", stem_channels=5), "stem_init whiten needs a stem with an even number"),
    (dict(stem_init="whiten"), "stem_init whiten needs a stem with an even number of channels, got "
     "stem_channels 0: e.g. --stem-channels 24"),
    (dict(betas=(0.9, 1.0)), "betas must be two numbers in \\[0, 1\\), got \\(0.9, 1.0\\)"),
])
def test_config_validation(over, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_preset("default", **over).validate()


def test_presets_are_valid_and_an_unknown_one_is_named():
    for name in PRESETS:
        cfg = TrainConfig.from_preset(name).validate()
        assert cfg.preset == name and cfg.engine == "fast"
    assert ENGINES == ("fast", "reference")
    with pytest.raises(ValueError, match="unknown preset 'fast': choose one of seed, default, hybrid, sample"):
        TrainConfig.from_preset("fast")


def test_a_saved_config_reads_back_and_durations_parse():
    cfg = TrainConfig.from_preset("hybrid", seed=3)
    saved = dataclasses.asdict(cfg)
    saved["betas"] = list(saved["betas"])                 # as JSON holds it
    assert TrainConfig.from_dict({**saved, "unknown_field": 1}) == cfg
    assert cfg.model_config().stem_channels == 24 and not hasattr(cfg.model_config(), "lr")
    assert [parse_duration(t) for t in ("30m", "90s", "1.5h", "1800")] == [1800.0, 90.0, 5400.0, 1800.0]
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("-5m")
