import pytest

from nestgen.config import ConfigError, config_from_dict, config_to_dict, load_config


def test_defaults_are_valid_and_round_trip():
    cfg = config_from_dict({})
    again = config_from_dict(config_to_dict(cfg))
    assert again == cfg


def test_shipped_config_loads(tmp_path):
    cfg = load_config("configs/digits.yaml")
    assert cfg.model.nest_factors == [1, 2, 4, 8]
    assert cfg.decode.schedule == "magnets"


@pytest.mark.parametrize("data, field", [
    ({"model": {"widht": 64}}, "model: unknown key(s) ['widht']"),
    ({"trian": {}}, "top level: unknown key(s) ['trian']"),
    ({"model": {"width": "big"}}, "model.width: expected an integer"),
    ({"model": {"width": 100}}, "model.width: must be a positive multiple of heads=8"),
    ({"model": {"nest_factors": [2, 4]}}, "model.nest_factors: must include 1"),
    ({"model": {"nest_factors": [1, 3]}}, "model.nest_factors: factor 3 must divide heads=8"),
    ({"model": {"attention_width": "half"}}, "model.attention_width: must be one of ['nested', 'full']"),
    ({"train": {"lr": -1.0}}, "train.lr: must be > 0"),
    ({"train": {"steps": True}}, "train.steps: expected an integer"),
    ({"train": {"distill": {"value": 2.0}}}, "train.distill.value: must be in [0, 1]"),
    ({"train": {"sizes_per_step": "some"}}, "train.sizes_per_step"),
    ({"decode": {"cache": "sometimes"}}, "decode.cache: unknown cache policy 'sometimes'"),
    ({"decode": {"schedule": "8x3,4x3"}}, "decode.schedule: schedule '8x3,4x3' has 6 steps but 12"),
    ({"decode": {"schedule": "16x12"}}, "decode.schedule: schedule '16x12' uses nest factor 16"),
    ({"decode": {"schedule": "fastest"}}, "decode.schedule: unknown schedule preset 'fastest'"),
])
def test_bad_values_name_the_field(data, field):
    with pytest.raises(ConfigError) as e:
        config_from_dict(data)
    assert field in str(e.value)


def test_overrides_parse_yaml_values():
    cfg = config_from_dict({}, ["train.steps=7", "model.nest_factors=[1, 2]", "decode.schedule=2x6,1x6"])
    assert cfg.train.steps == 7 and cfg.model.nest_factors == [1, 2]
    with pytest.raises(ConfigError, match="expected key=value"):
        config_from_dict({}, ["train.steps"])


def test_float_fields_accept_ints_but_not_strings():
    assert config_from_dict({"train": {"lr": 1}}).train.lr == 1.0
    with pytest.raises(ConfigError, match="train.lr: expected a number"):
        config_from_dict({"train": {"lr": "fast"}})
