"""TrainConfig: validation in __post_init__, stored configs, presets and stage defaults."""

import pytest

from srdeploy.training.config import ConfigError, TrainConfig, resolve_config, stage_defaults


def test_extra_is_gone_and_old_configs_still_load():
    assert "extra" not in TrainConfig(data="x").to_dict()
    old = {**TrainConfig(data="x").to_dict(), "extra": {}}  # a config.json written before
    assert TrainConfig.from_dict(old) == TrainConfig(data="x")
    with pytest.raises(ConfigError, match="unknown config keys: colour"):
        TrainConfig.from_dict({**old, "colour": "red"})


@pytest.mark.parametrize("field, value", [
    ("log_every", 0), ("ckpt_every", 0), ("val_every", 0), ("steps", 0), ("epochs", 0), ("max_minutes", 0.0),
    ("batch_size", 1), ("lr", 0.0), ("workers", -1), ("val_limit", 0), ("num_blocks", 0), ("vgg_scale", 0.0),
    ("adv_weight", -1.0), ("scale", 3), ("downsample", "nearest"), ("amp", "fp8"), ("data", ""),
])
def test_nonsensical_values_are_refused(field, value):
    with pytest.raises(ConfigError, match=f"`{field}`"):
        TrainConfig(**{"data": "x", field: value})


def test_stage_defaults_are_what_resolve_config_gives_without_a_preset():
    for stage in ("srresnet", "srgan"):
        resolved = resolve_config(stage, None, {"data": "x"}).to_dict()
        assert {k: v for k, v in stage_defaults(stage).items() if k != "data"} == {k: v for k, v in resolved.items() if k != "data"}
    assert stage_defaults("srgan")["epochs"] == 8 and resolve_config("srgan", None, {"data": "x", "content": "vgg"}).epochs == 6


@pytest.mark.parametrize(("settings", "message", "served"), [
    ({"val_list": "val.txt"}, "`val_list` is used only with `val_data`", {"val_data": "v"}),
    ({"stage": "srgan", "content": "mse", "vgg_weights": "vgg19.pth"}, "`vgg_weights` is used only by a content loss with vgg", {"content": "mse+vgg"}),
    ({"stage": "srresnet", "vgg_weights": "vgg19.pth"}, "`vgg_weights` is used only by a content loss with vgg", {"stage": "srgan", "content": "vgg"}),
])
def test_a_setting_that_would_be_ignored_is_refused(settings, message, served):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(data="x", epochs=1, **settings)
    assert TrainConfig(data="x", epochs=1, **{**settings, **served})  # beside what it serves
