"""Files someone else made: JSON nested beyond the parser's recursion, links to devices, FIFOs and oversized
JSON in a run directory get one clear error, never a traceback, a hang or an unbounded read."""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import re
import resource
import subprocess
import sys
import time

import pytest

import vaekit
from vaekit import CheckpointError, ConfigError, anomaly, fileio
from vaekit.cli import main
from vaekit.config import load_config_file
from vaekit.model import size

from conftest import digits_config

DEEP = b"[" * 100_000 + b"]" * 100_000  # json.loads gives up with a RecursionError on this


@pytest.fixture
def run(tmp_path):
    vaekit.train(digits_config(**{"train.epochs": 1}), tmp_path / "run")
    return tmp_path / "run"


def tamper(run, name: str, blob: bytes) -> None:
    """Replace a file of the run's checkpoint and record its new SHA-256, as a forger would: the file is read
    and parsed, not refused for its digest."""
    latest = run / "latest.json"
    if name == "latest.json":
        latest.write_bytes(blob)
        return
    pointer = json.loads(latest.read_bytes())
    (run / "checkpoints" / pointer["checkpoint"] / name).write_bytes(blob)
    pointer["sha256"][name] = hashlib.sha256(blob).hexdigest()
    latest.write_text(json.dumps(pointer))


@pytest.mark.parametrize("name", ["latest.json", "config.json", "training_state.json"])
def test_json_nested_too_deeply_is_one_error(run, name, capsys):
    tamper(run, name, DEEP)
    command = ["train", "--resume", str(run)] if name == "training_state.json" else \
        ["sample", str(run), "-o", str(run / "s.png")]
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and name in err and "is not readable JSON: it is nested too deeply" in err


def test_links_to_devices_and_fifos_are_refused_without_reading(run, capsys):
    weights = run / "model.safetensors"
    (run / "latest.json").unlink()  # the plain layout: the top-level files are read as they are
    weights.unlink()
    os.symlink("/dev/zero", weights)
    with pytest.raises(CheckpointError, match="a device, not a regular file"):
        vaekit.load(run)
    weights.unlink()
    os.mkfifo(weights)  # would block a plain open() until a writer came
    with pytest.raises(CheckpointError, match="a FIFO, not a regular file"):
        vaekit.load(run)


def test_oversized_json_is_refused_by_size(run, monkeypatch):
    monkeypatch.setattr(fileio, "JSON_LIMIT", 1000)
    monkeypatch.setattr(vaekit.checkpoint, "JSON_LIMIT", 1000)
    latest = run / "latest.json"
    latest.write_bytes(latest.read_bytes() + b" " * 2000)
    with pytest.raises(CheckpointError, match=r"over the 1000 such a file may hold"):
        vaekit.load(run)


def test_threshold_and_config_files_too(tmp_path, run):
    (run / anomaly.THRESHOLD_FILE).write_bytes(DEEP)
    with pytest.raises(CheckpointError, match="nested too deeply"):
        anomaly.load_threshold(run)
    deep = tmp_path / "deep.json"
    deep.write_bytes(DEEP)
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config_file(deep)
    toml = tmp_path / "deep.toml"
    toml.write_text("a = " + "[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match=r"deep\.toml"):
        load_config_file(toml)
    os.mkfifo(tmp_path / "fifo.json")
    with pytest.raises(ConfigError, match="a FIFO, not a regular file"):
        load_config_file(tmp_path / "fifo.json")
    assert json.loads(fileio.read_regular(run / "config.json"))["format"] == "vaekit-checkpoint"


def test_a_full_disk_during_a_checkpoint_is_one_error_and_leaves_no_half_set(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real, calls = vaekit.checkpoint.write_synced, []

    def fill_up(path, blob):  # the disk fills during the second checkpoint's second file
        calls.append(path)
        if len(calls) == 6:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, blob)

    monkeypatch.setattr(vaekit.checkpoint, "write_synced", fill_up)
    with pytest.raises(CheckpointError, match=r"disk full while writing the checkpoint of epoch 2 .*; the last "
                                              r"complete one is epoch 1; the half-written files were removed"):
        vaekit.train(digits_config(**{"train.epochs": 3}), out)
    assert [p.name for p in (out / "checkpoints").iterdir()] == [json.loads((out / "latest.json").read_bytes())[
        "checkpoint"]]  # only the complete set of epoch 1
    monkeypatch.setattr(vaekit.checkpoint, "write_synced", real)
    (out / "checkpoints" / ".tmp-000002-0badf00d").mkdir()  # a leftover of a killed write
    result = vaekit.resume(out)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp-")]


def test_an_output_that_cannot_be_written_is_refused_before_training(tmp_path, monkeypatch, capsys):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(vaekit.TrainingError, match="is a file, not a folder: choose another --out"):
        vaekit.train(digits_config(), tmp_path / "a-file")
    real_mkdir = type(tmp_path).mkdir

    def read_only(self, *args, **kwargs):  # tests run as root, so no chmod can make a folder read-only
        if self.name == "ro-run":
            raise OSError(errno.EROFS, "Read-only file system")
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(type(tmp_path), "mkdir", read_only)
    assert main(["train", "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path / "ro-run")]) == 2
    err = capsys.readouterr().err
    assert "cannot write the run directory" in err and "Read-only file system" in err and "Traceback" not in err


def test_a_checkpoint_folder_linked_from_outside_the_run_is_refused(run, tmp_path):
    pointer = json.loads((run / "latest.json").read_bytes())
    inside = run / "checkpoints" / pointer["checkpoint"]
    elsewhere = tmp_path / "elsewhere"
    inside.rename(elsewhere)  # the same files, now outside the run, reached through a link
    os.symlink(elsewhere, inside)
    with pytest.raises(CheckpointError, match=r"outside .*: a checkpoint's folders must be inside its run"):
        vaekit.load(run)


def test_a_threshold_file_cannot_ask_for_unbounded_samples(run):
    good = {"value": 1.0, "score": "elbo", "n_samples": 10, "rule": "by hand",
            "model_sha256": vaekit.checkpoint.model_digest(run)}
    for n in (0, 10**9):
        (run / anomaly.THRESHOLD_FILE).write_text(json.dumps({**good, "n_samples": n}))
        with pytest.raises(CheckpointError, match=rf"n_samples = {n} is outside 1\.\.100000"):
            anomaly.load_threshold(run)
    (run / anomaly.THRESHOLD_FILE).write_text(json.dumps(good))
    assert anomaly.load_threshold(run).n_samples == 10


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@pytest.mark.parametrize("sizes", [{"hidden": [10**9]}, {"latent_dim": 10**8}, {"data_shape": [10**8]},
                                   {"hidden": [4000] * 200}, {"prior": "mog", "prior_components": 10**8}])
def test_sizes_in_a_config_are_checked_against_the_weights_before_allocating(run, sizes):
    doc = json.loads((run / "checkpoints" / json.loads((run / "latest.json").read_bytes())["checkpoint"] /
                      "config.json").read_bytes())
    doc["config"]["model"].update(sizes)
    tamper(run, "config.json", json.dumps(doc).encode())
    before, start = peak_rss_mb(), time.perf_counter()
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*(but config\.json asks for|does not match "
                                              r"config\.json: missing)"):
        vaekit.load(run)
    assert time.perf_counter() - start < 5 and peak_rss_mb() - before < 100  # nothing of the asked size was made


def test_sizes_beyond_any_index_are_refused_by_name(run):
    doc = json.loads(fileio.read_regular(run / "config.json"))
    doc["config"]["model"]["latent_dim"] = 10**100
    tamper(run, "config.json", json.dumps(doc).encode())
    with pytest.raises(CheckpointError, match=r"config\.json: model\.latent_dim = 1e\+100 is out of range"):
        vaekit.load(run)
    with pytest.raises(ConfigError, match=r"model\.hidden = \(4, 4, 4, 4, 4, 4, \.\.\.\) is invalid: expected "
                                          r"layer widths in 1\.\.2147483647"):
        digits_config(**{"model.hidden": [4] * 2000})


@pytest.mark.parametrize("flags", [["--hidden", "1000000000"], ["--latent-dim", "1000000000"],
                                   ["--arch", "conv", "--conv-channels", "100000,100000"]])
def test_sizes_typed_on_the_command_line_are_refused_with_the_memory_they_need(tmp_path, flags, capsys):
    before = peak_rss_mb()
    assert main(["train", "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path / "run"), *flags]) == 2
    err = capsys.readouterr().err
    assert re.search(r"training this model needs about [0-9,.]+ GB, more than the [0-9.]+ GB free on cpu: "
                     r"[0-9,]+ parameters", err), err
    assert "Traceback" not in err and peak_rss_mb() - before < 100
    assert not (tmp_path / "run" / "latest.json").exists()


def test_the_memory_estimate_counts_parameters_exactly_and_scales_with_the_batch():
    config = digits_config(**{"model.data_shape": [64]})
    model = vaekit.checkpoint.VAE(config.model)
    weights, batch = size.training_bytes(config)
    assert weights == 16 * sum(p.numel() for p in model.parameters())
    _, double = size.training_bytes(config.override({"train.batch_size": 2 * config.train.batch_size}))
    assert double == 2 * batch > 0


# A .mat file whose damage (a zero-sized element) makes scipy 1.17's reader raise and leave its memory
# corrupted: a second read in the same process crashed it (SIGSEGV) before vaekit parsed such files apart.
DAMAGED_MAT = base64.b64decode(
    "TUFUTEFCIDUuMCBNQVQtZmlsZSBQbGF0Zm9ybTogcG9zaXgsIENyZWF0ZWQgb246IE1vbiBOb3YgMzAgMTI6Mjc6NDMgMjAyNgAA"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAJ8AAAAAAAAAAAAAAAAAAAAAAAABSU0OAAAA8AAAAAYAAAAIAAAABgAAAAAA"
    "AAAFAAAACAAAAAYAAAAEAAAAAQABAFgAAAAJRgAAwAAAAAgCX5vlXAhBCE8nNv1IF0FgVxlz2ikdQcBAH3fC2u1AiQic1sEpJcEA"
    "AAAAAAAAgHv5jk2S5SzBvBaKra2ZIUEAAAAAfoQuwQAAAAAAAABAKNSALA8YDkGib2VsqXwhwQAAAAAAAAiA46VuZpSeK8ECyhjd"
    "3i4swTbvPMdGDilBAAAAAAAAMEAQOSPKPX70QBkRLu5S6yvBwM7cL03/28BqKDKI4UEcwbDu3cfxFBhBF8a91ZdYk4Kk9Mc0CXEt"
    "QQ==")


def test_a_damaged_mat_file_is_refused_without_corrupting_the_process(tmp_path):
    path = tmp_path / "damaged.mat"
    path.write_bytes(DAMAGED_MAT)
    code = ("from vaekit.data import tabular\n"
            "for _ in range(3):\n"
            "    try:\n"
            f"        tabular.read({str(path)!r})\n"
            "    except Exception as e:\n"
            "        print(type(e).__name__, e)\n"
            "print('alive')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 4 and lines[-1] == "alive"
    assert all(line.startswith("DataError cannot read") and "as a MATLAB file" in line for line in lines[:3])
