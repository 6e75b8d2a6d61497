"""Checkpoints: exact round trips, atomic saves, and refusal of anything missing, tampered with or unsafe."""

from __future__ import annotations

import json
import os
import pathlib
import pickle
from pathlib import Path

import pytest
import torch

import vaekit
from vaekit import VAE, Config, checkpoint

from conftest import tiny_model

FILES = ["config.json", "model.safetensors"]


def config_for(model: VAE) -> Config:
    """A run Config whose model section is the model's own."""
    return Config(model=model.config)


def saved(tmp_path: Path, model: VAE | None = None, name: str = "ckpt") -> tuple[Path, VAE]:
    model = model if model is not None else tiny_model()
    return checkpoint.save(model, config_for(model), tmp_path / name), model


def outputs(model: VAE) -> tuple[torch.Tensor, ...]:
    """Encoder mean and scale and decoder mean on fixed inputs."""
    g = torch.Generator().manual_seed(123)
    x = torch.rand(6, *model.data_shape, generator=g)
    z = torch.randn(6, model.latent_dim, generator=g)
    with torch.no_grad():
        q = model.encode(x)
        return q.mean, q.base_dist.scale, model.decode(z).mean


def assert_same_model(a: VAE, b: VAE) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    for oa, ob in zip(outputs(a), outputs(b), strict=True):
        assert torch.equal(oa, ob)


def edit_config(directory: Path, edit) -> None:
    path = directory / "config.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


# --- round trip -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian-learned"])
def test_round_trip_is_bitwise_exact(tmp_path, likelihood):
    """save -> load gives bitwise identical weights, q(z|x) mean/scale and p(x|z) mean."""
    model = tiny_model(likelihood)
    with torch.no_grad():  # make the weights not the default init of torch.manual_seed(0)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    directory, _ = saved(tmp_path, model)
    loaded = vaekit.load(directory)
    assert isinstance(loaded, VAE) and not loaded.training
    assert loaded.config == model.config
    assert_same_model(model, loaded)


def test_load_run_returns_the_saved_config(tmp_path):
    """load_run and load_config give back the whole Config that was saved, not just the model section."""
    model = tiny_model()
    cfg = Config().override({"model.data_shape": [1, 4, 4], "model.latent_dim": 3, "model.hidden": [16],
                             "data.binarize": "dynamic", "data.val_size": 0.2, "train.lr": 3e-4,
                             "train.epochs": 7})
    assert cfg.model == model.config
    checkpoint.save(model, cfg, tmp_path / "run")
    loaded, loaded_cfg = checkpoint.load_run(tmp_path / "run")
    assert loaded_cfg == cfg
    assert checkpoint.load_config(str(tmp_path / "run")) == cfg
    assert_same_model(model, loaded)


def test_save_writes_exactly_two_files(tmp_path):
    """A checkpoint directory holds config.json and model.safetensors and nothing else (no temp files)."""
    directory, _ = saved(tmp_path, name="a/b/ckpt")  # parents are created
    assert sorted(os.listdir(directory)) == FILES
    doc = json.loads((directory / "config.json").read_text())
    assert doc["format"] == checkpoint.FORMAT and doc["version"] == checkpoint.VERSION
    assert doc["config"]["model"]["data_shape"] == [1, 4, 4]


# --- refusals ---------------------------------------------------------------------------------------------


def test_missing_directory(tmp_path):
    """A directory that does not exist is refused by name."""
    with pytest.raises(vaekit.CheckpointError, match="does not exist") as err:
        vaekit.load(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value)


def test_missing_config(tmp_path):
    """A directory without config.json is not a checkpoint."""
    directory, _ = saved(tmp_path)
    (directory / "config.json").unlink()
    with pytest.raises(vaekit.CheckpointError, match=r"config\.json is missing"):
        vaekit.load(directory)


@pytest.mark.parametrize(("text", "match"), [
    ("{not json", "not readable JSON"),
    ("[1, 2]", "not a vaekit checkpoint config"),
    ('{"format": "other", "version": 1, "config": {}}', "not a vaekit checkpoint config"),
    ('{"format": "vaekit-checkpoint", "version": 99, "config": {}}', "version 99"),
])
def test_malformed_config_json(tmp_path, text, match):
    """Broken JSON, foreign documents and unknown format versions are refused."""
    directory, _ = saved(tmp_path)
    (directory / "config.json").write_text(text)
    with pytest.raises(vaekit.CheckpointError, match=match):
        vaekit.load(directory)


def test_config_with_unknown_key(tmp_path):
    """An unknown key in config.json is refused, and the message names it."""
    directory, _ = saved(tmp_path)
    edit_config(directory, lambda d: d["config"]["model"].update(colour="red"))
    with pytest.raises(vaekit.CheckpointError, match="colour") as err:
        checkpoint.load_config(directory)
    assert "model" in str(err.value) and "unknown config key" in str(err.value)


def test_config_with_unknown_section(tmp_path):
    """An unknown top-level section is refused by name as well."""
    directory, _ = saved(tmp_path)
    edit_config(directory, lambda d: d["config"].update(optimizer={"name": "sgd"}))
    with pytest.raises(vaekit.CheckpointError, match="optimizer"):
        vaekit.load(directory)


@pytest.mark.parametrize(("key", "value"), [("latent_dim", "three"), ("hidden", 16), ("latent_dim", True),
                                            ("latent_dim", -2)])
def test_config_with_ill_typed_value(tmp_path, key, value):
    """An ill-typed or invalid value in config.json is refused naming the key."""
    directory, _ = saved(tmp_path)
    edit_config(directory, lambda d: d["config"]["model"].update({key: value}))
    with pytest.raises(vaekit.CheckpointError, match=rf"model\.{key}"):
        vaekit.load(directory)


def test_truncated_weights(tmp_path):
    """A model.safetensors cut in half is refused as corrupt or truncated."""
    directory, _ = saved(tmp_path)
    path = directory / "model.safetensors"
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(vaekit.CheckpointError, match="corrupt or truncated") as err:
        vaekit.load(directory)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("n_bytes", [0, 5, 4096])
def test_random_bytes_as_weights(tmp_path, n_bytes):
    """Random bytes (or an empty file) as model.safetensors are refused, not crashed on."""
    directory, _ = saved(tmp_path)
    g = torch.Generator().manual_seed(n_bytes)
    noise = torch.randint(0, 256, (n_bytes,), dtype=torch.uint8, generator=g).numpy().tobytes()
    (directory / "model.safetensors").write_bytes(noise)
    with pytest.raises(vaekit.CheckpointError, match="corrupt or truncated"):
        vaekit.load(directory)


class _Payload:
    """Unpickling this object creates ``marker``: proof that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_pickle_is_never_loaded(tmp_path):
    """A directory with only a model.pt pickle is refused, and the pickle is never unpickled."""
    # The payload really does run code on unpickling:
    control = tmp_path / "control-marker"
    pickle.loads(pickle.dumps(_Payload(control)))
    assert control.exists()

    directory, _ = saved(tmp_path)
    (directory / "model.safetensors").unlink()
    marker = tmp_path / "unpickled-marker"
    (directory / "model.pt").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(vaekit.CheckpointError) as err:
        vaekit.load(directory)
    msg = str(err.value)
    assert "model.safetensors is missing" in msg and "model.pt" in msg and "never loads pickle" in msg
    assert not marker.exists()


def test_pickle_renamed_to_safetensors_is_not_unpickled(tmp_path):
    """A pickle disguised as model.safetensors is refused as corrupt, without running it."""
    directory, _ = saved(tmp_path)
    marker = tmp_path / "unpickled-marker"
    (directory / "model.safetensors").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(vaekit.CheckpointError):
        vaekit.load(directory)
    assert not marker.exists()


def test_weights_with_other_shapes(tmp_path):
    """Weights saved from a model with another latent_dim do not load under this config."""
    directory, _ = saved(tmp_path)
    other, _ = saved(tmp_path, tiny_model(latent=5), name="other")
    os.replace(other / "model.safetensors", directory / "model.safetensors")
    with pytest.raises(vaekit.CheckpointError, match="shape") as err:
        vaekit.load(directory)
    assert "expected" in str(err.value) and "(6, 16)" in str(err.value) and "(10, 16)" in str(err.value)


def test_weights_with_other_tensors(tmp_path):
    """Weights of a deeper network (other tensor names) are refused, listing missing/unexpected tensors."""
    directory, _ = saved(tmp_path)
    deeper = tiny_model(hidden=(16, 16))
    checkpoint.save(deeper, config_for(tiny_model()), directory)  # config and weights disagree
    with pytest.raises(vaekit.CheckpointError, match=r"does not match config\.json") as err:
        vaekit.load(directory)
    assert "unexpected" in str(err.value) and "encoder" in str(err.value)


# --- atomic saves -----------------------------------------------------------------------------------------


def test_saving_over_a_checkpoint_replaces_it(tmp_path):
    """A second save into the same directory replaces the weights; loading gives the new ones."""
    directory, model = saved(tmp_path)
    old = vaekit.load(directory)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-2.0).add_(0.5)
    checkpoint.save(model, config_for(model), directory)
    assert sorted(os.listdir(directory)) == FILES
    loaded = vaekit.load(directory)
    assert_same_model(model, loaded)
    assert not torch.equal(outputs(loaded)[2], outputs(old)[2])


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    """A save that dies half-way through writing the weights leaves the old checkpoint intact, byte for byte."""
    directory, model = saved(tmp_path)
    before = {name: (directory / name).read_bytes() for name in FILES}
    real_save_file = checkpoint.save_file
    calls = []

    def crashing_save_file(tensors, filename, metadata=None):
        calls.append(filename)
        real_save_file(tensors, filename, metadata=metadata)
        blob = Path(filename).read_bytes()
        Path(filename).write_bytes(blob[: len(blob) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", crashing_save_file)
    changed = tiny_model()
    with torch.no_grad():
        for p in changed.parameters():
            p.add_(1.0)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.save(changed, config_for(changed), directory)
    assert len(calls) == 1 and Path(calls[0]).name != "model.safetensors"  # it wrote to a temp file
    assert sorted(os.listdir(directory)) == FILES  # the temp file was removed
    assert {name: (directory / name).read_bytes() for name in FILES} == before
    assert_same_model(model, vaekit.load(directory))
