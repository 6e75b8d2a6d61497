"""Config parsing is strict, round-trips, and the presets are the documented models."""

from __future__ import annotations

import json

import pytest

from vaekit import Config, ConfigError, preset
from vaekit.config import PRESETS, flatten, load_config_file, parse_assignment


def test_round_trip_through_dict_and_json():
    cfg = preset("iwae").override({"model.data_shape": [1, 28, 28], "train.epochs": 3})
    again = Config.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert again.model.hidden == (200, 200) and again.model.data_shape == (1, 28, 28)


def test_seed_preset_is_the_pytorch_examples_model():
    cfg = preset("seed")
    assert (cfg.model.hidden, cfg.model.activation, cfg.model.latent_dim) == ((400,), "relu", 20)
    assert (cfg.model.likelihood, cfg.data.binarize, cfg.data.val_size) == ("bernoulli", "none", 0)
    assert (cfg.train.lr, cfg.train.batch_size) == (1e-3, 128)


def test_iwae_preset_is_burda_et_al():
    cfg = preset("iwae")
    assert (cfg.model.hidden, cfg.model.activation, cfg.model.latent_dim) == ((200, 200), "tanh", 50)
    assert cfg.data.binarize == "dynamic"


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="valid presets: conv, hvae, hvae-conv, hvae-spatial, iaf, iwae, "
                                          "outliers, seed, vamp"):
        preset("nope")
    assert set(PRESETS) == {"seed", "iwae", "conv", "outliers", "vamp", "iaf", "hvae",
                            "hvae-conv", "hvae-spatial"}


@pytest.mark.parametrize(("key", "value", "message"), [
    ("model.latent_dims", 3, "unknown config key 'model.latent_dims'"),
    ("modle.latent_dim", 3, "unknown config key 'modle.latent_dim'"),
    ("model.latent_dim", "three", "model.latent_dim must be of type int"),
    ("model.latent_dim", 0, "model.latent_dim = 0 is invalid"),
    ("model.hidden", {"width": 400}, "model.hidden must be a list"),
    ("train.lr", -1.0, "train.lr = -1.0 is invalid"),
    ("train.epochs", True, "train.epochs must be of type int"),
    ("data.binarize", "sometimes", "data.binarize = 'sometimes' is invalid"),
    ("train.device", "tpu", "train.device = 'tpu' is invalid"),
])
def test_bad_values_are_refused_by_name(key, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        Config().override({key: value})


def test_from_dict_refuses_unknown_sections_and_keys():
    with pytest.raises(ConfigError, match="unknown config key 'optim'"):
        Config.from_dict({"optim": {}})
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.depth'"):
        Config.from_dict({"model": {"depth": 3}})


def test_ints_are_accepted_as_floats_but_not_the_reverse():
    assert Config().override({"train.lr": 1}).train.lr == 1.0
    assert Config().override({"train.epochs": 3.0}).train.epochs == 3
    with pytest.raises(ConfigError):
        Config().override({"train.epochs": 2.5})


def test_config_files_json_and_toml(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"model": {"latent_dim": 7}, "train": {"lr": 0.01}}))
    (tmp_path / "c.toml").write_text('[model]\nlatent_dim = 7\nhidden = [64, 32]\n[train]\nlr = 0.01\n')
    for name in ("c.json", "c.toml"):
        cfg = Config().override(flatten(load_config_file(tmp_path / name)))
        assert cfg.model.latent_dim == 7 and cfg.train.lr == 0.01
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"bad\.json is not valid json"):
        load_config_file(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config_file(tmp_path / "missing.json")


def test_parse_assignment():
    assert parse_assignment("model.hidden=[256, 128]") == ("model.hidden", [256, 128])
    assert parse_assignment("model.activation=tanh") == ("model.activation", "tanh")
    assert parse_assignment("train.lr=3e-4") == ("train.lr", 3e-4)
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        parse_assignment("train.lr")


@pytest.mark.parametrize(("text", "expected"), [
    ("model.hidden=512,512", (512, 512)), ("model.hidden=[512,512]", (512, 512)), ("model.hidden=300", (300,)),
    ("model.hidden=512, 256", (512, 256)), ("train.free_bits_per_layer=0.5", (0.5,))])
def test_set_takes_lists_as_the_list_flags_do(text, expected):
    key, value = parse_assignment(text)
    cfg = Config().override({key: value})
    assert cfg.to_dict()[key.split(".")[0]][key.split(".")[1]] == list(expected)
    with pytest.raises(ConfigError, match=r"model\.hidden"):
        Config().override({"model.hidden": "a,b"})
