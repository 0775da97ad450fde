"""Strict configuration: every bad key or value is named."""

import pytest

from cmkd import methods
from cmkd.config import ConfigError, DistillConfig


def test_defaults_are_valid_and_round_trip_through_yaml(tmp_path):
    cfg = DistillConfig(algorithm="ucmkd_bilevel", fa="mmd", mmd_multiplier=0.5, seed=3)
    path = tmp_path / "best.yaml"
    cfg.to_yaml(path)
    assert DistillConfig.from_yaml(path) == cfg


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(
        ConfigError, match=r"trial: unknown key 'epsilom' \(did you mean 'epsilon'\?\)"
    ):
        DistillConfig.from_dict({"epsilom": 0.1}, source="trial")


@pytest.mark.parametrize(
    "key,value,expected",
    [
        ("w_fa", -1.0, "greater than or equal to 0"),
        ("scaling", 0.5, "greater than or equal to 0.8"),
        ("epsilon", 0.0, "greater than 0"),
        ("algorithm", "sumo", "Input should be 'ce'"),
        ("batch_size", "big", "valid integer"),
        ("kd_alpha", 1.5, "less than or equal to 1"),
    ],
)
def test_out_of_range_values_name_the_key(key, value, expected):
    with pytest.raises(ConfigError) as e:
        DistillConfig.from_dict({key: value}, source="space.yaml")
    assert f"space.yaml: key '{key}'" in str(e.value) and expected in str(e.value)
    assert repr(value) in str(e.value)


def test_yaml_problems_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        DistillConfig.from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("w_fa: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        DistillConfig.from_yaml(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml: expected a mapping"):
        DistillConfig.from_yaml(listy)


def test_step_kwargs_bind_the_chosen_terms():
    cfg = DistillConfig(fa="mmd", mmd_kernels=3, la="kl", la_temperature=2.0)
    kw = cfg.step_kwargs()
    assert kw["fa"].keywords["num_kernels"] == 3 and kw["la"].keywords == {"temperature": 2.0}
    assert DistillConfig(fa="reference_ot").fa_kwargs() == {"reg": 0.1, "num_iter": 100}
    step = methods.make_step(cfg.algorithm, **kw)
    assert step.func is methods.ucmkd_sum_step
