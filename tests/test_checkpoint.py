"""Checkpoints: exact round trips, atomic saves, and refusal of anything missing, tampered with or unsafe."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import pickle
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vaekit
from vaekit import VAE, Config, checkpoint

from conftest import digits_config, tiny_model

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
    assert "config.json asks for" in str(err.value) and "(6, 16)" in str(err.value) and "(10, 16)" in str(err.value)


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


# --- training runs: a set of files behind one pointer ---------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    from conftest import digits_config

    directory = tmp_path_factory.mktemp("run")
    vaekit.train(digits_config(**{"train.epochs": 1}), directory)
    return directory


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    import shutil

    shutil.copytree(trained_run, tmp_path / "run")
    return tmp_path / "run"


def current_file(directory: Path, name: str) -> Path:
    return checkpoint.current(directory)[0] / name


def vouch_for(directory: Path, name: str) -> None:
    """Record the file's present SHA-256 in latest.json, as if the damage had been there when it was written."""
    import hashlib

    pointer = json.loads((directory / "latest.json").read_text())
    pointer["sha256"][name] = hashlib.sha256(current_file(directory, name).read_bytes()).hexdigest()
    (directory / "latest.json").write_text(json.dumps(pointer))


def test_run_directories_load_through_the_pointer(run_copy):
    """load/load_run/load_config read the set latest.json names; the top-level copies are the same files."""
    _, cfg = checkpoint.load_run(run_copy)
    assert cfg.model.data_shape == (1, 8, 8)
    assert (run_copy / "model.safetensors").read_bytes() == current_file(run_copy, "model.safetensors").read_bytes()
    assert checkpoint.load_state(run_copy).epoch == 1


def test_a_load_racing_a_new_checkpoint_never_pairs_files_of_two(run_copy, monkeypatch):
    """latest.json switching to a newer checkpoint between the config and the weights reads of one load_run:
    the load reads both through the pointer it resolved first, so it refuses rather than mixing the two, and
    given the directory it reads the newer checkpoint whole instead."""
    model, cfg = checkpoint.load_run(run_copy)
    before = checkpoint.load_state(run_copy)
    newer_cfg = cfg.override({"train.epochs": 2})
    newer = {k: v + 1.0 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    state = checkpoint.TrainingState(2, before.step * 2, [*before.history, {**before.history[0], "epoch": 2}],
                                     before.tensors)
    real_load_config = checkpoint.load_config

    def load_config_then_switch(source):
        config = real_load_config(source)
        monkeypatch.setattr(checkpoint, "load_config", real_load_config)  # one writer, once
        checkpoint.save_run(run_copy, newer_cfg, newer, state)  # a training run saving its next epoch
        return config

    monkeypatch.setattr(checkpoint, "load_config", load_config_then_switch)
    old_set = checkpoint.resolve(run_copy)
    with pytest.raises(vaekit.CheckpointError, match=r"model\.safetensors is gone: checkpoint .* was replaced by "
                                                      r".* while it was being read .* load it again"):
        checkpoint.load_run(old_set)  # a set given by the caller is read as it is, or not at all
    monkeypatch.setattr(checkpoint, "load_config", load_config_then_switch)
    checkpoint.save_run(run_copy, cfg, model.state_dict(), before)  # back to the first weights, as a new set
    loaded, loaded_cfg = checkpoint.load_run(run_copy)  # a directory is read again, from the newer set, whole
    assert loaded_cfg == newer_cfg
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, newer[k])


def test_resolving_while_a_writer_replaces_the_set_it_names_takes_the_newer_set(run_copy, monkeypatch):
    """A writer that publishes a newer set and deletes the old one between a reader's read of latest.json and
    its look at the named folder: the reader resolves again and gets the newer set, not a 'missing' error."""
    model, cfg = checkpoint.load_run(run_copy)
    state = checkpoint.load_state(run_copy)
    real_read_json = checkpoint._read_json

    def read_then_replace(path):
        doc = real_read_json(path)
        if path.name == checkpoint.LATEST_FILE:
            monkeypatch.setattr(checkpoint, "_read_json", real_read_json)  # one writer, once
            checkpoint.save_run(run_copy, cfg, model.state_dict(), state)  # publishes a new set, deletes this one
        return doc

    first = checkpoint.resolve(run_copy).checkpoint_id
    monkeypatch.setattr(checkpoint, "_read_json", read_then_replace)
    ckpt = checkpoint.resolve(run_copy)
    assert ckpt.checkpoint_id != first and ckpt.snapshot.is_dir()
    assert not (run_copy / checkpoint.SNAPSHOT_DIR / first).exists()  # the race really happened
    assert checkpoint.load_run(ckpt)[1] == cfg


def test_readers_take_a_resolved_set_and_read_only_its_files(run_copy):
    """A CheckpointSet pins the checkpoint: every reader given it reads that one, whatever latest.json says."""
    ckpt = checkpoint.resolve(run_copy)
    assert checkpoint.resolve(ckpt) is ckpt and checkpoint.current(run_copy) == (ckpt.snapshot, ckpt.pointer)
    state = checkpoint.load_state(ckpt)
    assert state.source is ckpt and checkpoint.load_config(ckpt) == checkpoint.load_config(run_copy)
    assert checkpoint.load_preprocess(ckpt) is None
    assert checkpoint.model_digest(ckpt) == hashlib.sha256((run_copy / "model.safetensors").read_bytes()).hexdigest()


# Each reader of a run and the files of the set it reads.
READERS = {
    "load_config": (checkpoint.load_config, {"config.json"}),
    "load_run": (checkpoint.load_run, {"config.json", "model.safetensors"}),
    "vaekit.load": (vaekit.load, {"config.json", "model.safetensors"}),
    "load_state": (checkpoint.load_state, {"training_state.json", "training_state.safetensors"}),
    "resume": (lambda run: vaekit.resume(run, {"train.epochs": 2}),
               {"config.json", "model.safetensors", "training_state.json", "training_state.safetensors"}),
}


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "training_state.json",
                                  "training_state.safetensors"])
@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_file_of_a_run_checkpoint_is_refused(run_copy, name, damage):
    """Any change to a file of the set after it was written is caught by its SHA-256 in latest.json, by every
    reader of that file, each on its own (a resume too, before it trains)."""
    path = current_file(run_copy, name)
    blob = bytearray(path.read_bytes())
    if damage == "truncate":
        blob = blob[: len(blob) // 2]
    else:
        blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))
    readers = [reader for reader, (_, files) in READERS.items() if name in files]
    assert readers
    for reader in readers:
        with pytest.raises(vaekit.CheckpointError, match=rf"{name} does not match the SHA-256"):
            READERS[reader][0](run_copy)


def test_truncated_training_state_tensors_are_refused_even_when_vouched_for(run_copy):
    path = current_file(run_copy, "training_state.safetensors")
    path.write_bytes(path.read_bytes()[:100])
    vouch_for(run_copy, "training_state.safetensors")
    with pytest.raises(vaekit.CheckpointError, match=r"training_state\.safetensors is corrupt or truncated"):
        checkpoint.load_state(run_copy)


@pytest.mark.parametrize(("edit", "match"), [
    (lambda d: d.update(epoch="one"), r"key 'epoch' must be int, got 'one'"),
    (lambda d: d.update(finished=1), r"key 'finished' must be bool"),
    (lambda d: d.update(step=True), r"key 'step' must be int, got True"),
    (lambda d: d.update(colour="red"), r"unknown key 'colour'"),
    (lambda d: d.pop("history"), r"key 'history' must be list, got '<missing>'"),
    (lambda d: d.update(epoch=5), r"epoch 5, step .* do not fit together"),
    (lambda d: d.update(version=2), "not a vaekit training state of version 1"),
    (lambda d: d.update(checkpoint="000009-00000000"), "belongs to checkpoint '000009-00000000'"),
])
def test_ill_typed_training_state_is_refused_by_key(run_copy, edit, match):
    path = current_file(run_copy, "training_state.json")
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    vouch_for(run_copy, "training_state.json")
    with pytest.raises(vaekit.CheckpointError, match=match) as err:
        checkpoint.load_state(run_copy)
    assert "training_state.json" in str(err.value)


@pytest.mark.parametrize(("edit", "match"), [
    (lambda d: d.update(checkpoint="../../elsewhere"), "is not a checkpoint id"),
    (lambda d: d.update(checkpoint="000001-ffffffff"), r"names checkpoint 000001-ffffffff, but .* is missing"),
    (lambda d: d.update(format="other"), "not a vaekit checkpoint pointer"),
    (lambda d: d.update(version=7), "format version 7"),
    (lambda d: d.pop("sha256"), "key 'sha256' must map"),
])
def test_tampered_pointer_is_refused(run_copy, edit, match):
    doc = json.loads((run_copy / "latest.json").read_text())
    edit(doc)
    (run_copy / "latest.json").write_text(json.dumps(doc))
    with pytest.raises(vaekit.CheckpointError, match=match):
        vaekit.load(run_copy)


def test_a_file_from_another_checkpoint_is_refused(run_copy, trained_run, tmp_path):
    """Weights copied in from another run (and even vouched for) carry that checkpoint's id: refused."""
    import shutil

    other = tmp_path / "other"
    shutil.copytree(trained_run, other)
    vaekit.train(Config.from_dict(json.loads((other / "config.json").read_text())["config"]), other)
    shutil.copyfile(current_file(other, "model.safetensors"), current_file(run_copy, "model.safetensors"))
    vouch_for(run_copy, "model.safetensors")
    with pytest.raises(vaekit.CheckpointError, match=r"belongs to checkpoint .* files of different checkpoints"):
        vaekit.load(run_copy)


def test_pickle_in_a_run_checkpoint_is_never_loaded(run_copy, tmp_path):
    marker = tmp_path / "unpickled-marker"
    weights = current_file(run_copy, "model.safetensors")
    weights.unlink()
    (weights.parent / "model.pt").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(vaekit.CheckpointError, match=r"model\.safetensors is missing \(model\.pt present"):
        vaekit.load(run_copy)
    assert not marker.exists()


def test_a_plain_save_over_a_run_replaces_its_model(run_copy):
    model = tiny_model()
    checkpoint.save(model, config_for(model), run_copy)
    assert_same_model(model, vaekit.load(run_copy))
    with pytest.raises(vaekit.CheckpointError, match="holds no training state"):
        checkpoint.load_state(run_copy)


# Every place save_run can be interrupted, each time it is reached in one save of a run without preprocessing:
# (crash point, its n-th arrival, whether latest.json already names the new set by then).
CRASHES = [
    *[("checkpoint-file", n, False) for n in (1, 2, 3, 4)],  # after each of the set's four files
    ("checkpoint-before-rename", 1, False),
    ("checkpoint-before-switch", 1, False),
    ("atomic-replace", 1, False),  # latest.json's temporary file, written but not yet renamed
    ("atomic-replace", 2, True),  # publishing the top-level copies: model.safetensors ...
    ("atomic-replace", 3, True),  # ... then config.json
    ("checkpoint-after-switch", 1, True),
]


def next_epoch(run: Path) -> tuple[VAE, Config, checkpoint.TrainingState]:
    """The run's model with changed weights and the training state of a second epoch: what the next save holds."""
    before = checkpoint.load_state(run)
    model, cfg = checkpoint.load_run(run)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    state = checkpoint.TrainingState(2, before.step * 2, [*before.history, {**before.history[0], "epoch": 2}],
                                     before.tensors)
    return model, cfg, state


def test_the_crash_cases_are_every_arrival_at_every_crash_point(run_copy, monkeypatch):
    """CRASHES lists each crash point as often as one save reaches it: none is missing and none unreachable."""
    from vaekit import fileio

    reached = []
    monkeypatch.setattr(checkpoint, "crash_point", reached.append)
    monkeypatch.setattr(fileio, "crash_point", reached.append)
    model, cfg, state = next_epoch(run_copy)
    checkpoint.save_run(run_copy, cfg, model.state_dict(), state)
    arrivals = [(point, reached[: i + 1].count(point)) for i, point in enumerate(reached)]
    assert sorted(arrivals) == sorted((point, n) for point, n, _ in CRASHES)


@pytest.mark.parametrize(("point", "arrival", "switched"), CRASHES, ids=[f"{p}-{n}" for p, n, _ in CRASHES])
def test_a_checkpoint_interrupted_anywhere_leaves_a_loadable_one(run_copy, monkeypatch, point, arrival, switched):
    """An exception at each crash point of save_run (in-process; the kill test does it with SIGKILL): the save
    fails there, and the run loads whole, as the previous set until latest.json switches, the new one after."""
    from vaekit import fileio

    before_set, before_model = checkpoint.current(run_copy)[0], vaekit.load(run_copy)
    before_files = {p.name: p.read_bytes() for p in before_set.iterdir()}
    seen = Counter()

    def crash(name):
        seen[name] += 1
        if name == point and seen[name] == arrival:
            raise OSError(5, f"simulated crash at {point}")

    model, cfg, state = next_epoch(run_copy)
    with monkeypatch.context() as mp, pytest.raises((OSError, vaekit.CheckpointError)) as err:
        mp.setattr(checkpoint, "crash_point", crash)
        mp.setattr(fileio, "crash_point", crash)
        checkpoint.save_run(run_copy, cfg, model.state_dict(), state)  # the set's own writes fail as CheckpointError
    assert seen[point] == arrival and f"simulated crash at {point}" in repr(err.value) + repr(err.value.__cause__)
    assert checkpoint.load_state(run_copy).epoch == (2 if switched else 1)
    assert_same_model(vaekit.load(run_copy), model if switched else before_model)
    if not switched:  # the previous set is still the current one, every file as it was
        assert checkpoint.current(run_copy)[0] == before_set
        assert {p.name: p.read_bytes() for p in before_set.iterdir()} == before_files
    load_file(run_copy / "model.safetensors")  # the files at the top are whole, whichever checkpoint they are from
    json.loads((run_copy / "config.json").read_text())
    # and the next save, uncrashed, leaves one complete set and no leftovers
    checkpoint.save_run(run_copy, cfg, model.state_dict(), state)
    assert [p.name for p in (run_copy / "checkpoints").iterdir()] == [checkpoint.current(run_copy)[0].name]
    assert_same_model(vaekit.load(run_copy), model)
    assert checkpoint.load_state(run_copy).epoch == 2


def test_written_files_get_the_permissions_a_plain_open_would_give(tmp_path):
    import stat

    from vaekit.fileio import atomic_write_bytes

    def mode(p):
        return stat.S_IMODE(os.stat(p).st_mode)

    old = os.umask(0o022)
    try:
        vaekit.train(digits_config(**{"train.epochs": 1}), tmp_path / "run")
        files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
        assert files and {p.name: mode(p) for p in files} == {p.name: 0o644 for p in files}
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        assert mode(tmp_path / "a.bin") == 0o644
        os.chmod(tmp_path / "a.bin", 0o600)  # a file the user made private stays private when rewritten
        atomic_write_bytes(tmp_path / "a.bin", b"y")
        assert mode(tmp_path / "a.bin") == 0o600
        os.umask(0o077)
        atomic_write_bytes(tmp_path / "b.bin", b"x")
        assert mode(tmp_path / "b.bin") == 0o600
    finally:
        os.umask(old)
