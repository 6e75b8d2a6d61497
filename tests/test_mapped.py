"""Image arrays larger than the memory budget: read from disk in pieces, with the numbers of data in memory."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import vaekit
from vaekit import DataError, data
from vaekit.cli import main
from vaekit.config import DataConfig
from vaekit.data.mapped import MappedRows
from vaekit.training import streaming

from conftest import digits_config

RNG = np.random.default_rng(0)
TINY = 1e-6  # GB: every test array exceeds it, so it is read in pieces


def saved(tmp_path, a: np.ndarray, name: str = "images.npy"):
    path = tmp_path / name
    np.save(path, a)
    return path


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "grey", "float32"])
def test_rows_are_read_in_any_order_as_channel_first_examples(tmp_path, layout):
    nchw = RNG.integers(0, 256, (20, 3, 5, 6), dtype=np.uint8)  # W = 6: no tie with channels
    stored = {"nchw": nchw, "nhwc": nchw.transpose(0, 2, 3, 1), "grey": nchw[:, 0],
              "float32": nchw / np.float32(255)}[layout]
    want = nchw[:, :1] if layout == "grey" else stored if layout == "float32" else nchw
    rows = MappedRows.open(saved(tmp_path, stored))
    assert rows.shape == want.shape and len(rows) == 20
    order = np.array([7, 2, 19, 2, 0])
    assert np.array_equal(rows.take(order).numpy(), want[order])
    assert np.array_equal(rows[3:9].numpy(), want[3:9])
    part = rows.subset(np.array([4, 10, 11]))
    assert np.array_equal(part[1:].numpy(), want[[10, 11]]) and part.nbytes == want[:3].nbytes


def test_truncated_or_unusable_arrays_are_refused_by_name(tmp_path):
    path = saved(tmp_path, RNG.integers(0, 256, (50, 1, 8, 8), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"images\.npy cannot be read in pieces.*bytes of the"):
        MappedRows.open(path)
    with pytest.raises(DataError, match="int32"):
        MappedRows.open(saved(tmp_path, np.zeros((4, 1, 2, 2), np.int32), "ints.npy"))


@pytest.mark.parametrize("binarize", ["none", "dynamic"])
def test_a_large_array_stays_on_disk_with_the_values_of_memory(tmp_path, binarize, caplog):
    path = saved(tmp_path, RNG.integers(0, 256, (300, 1, 8, 8), dtype=np.uint8))
    with caplog.at_level(logging.INFO, logger="vaekit.data.registry"):
        mapped = data.load(DataConfig(dataset=str(path), binarize=binarize, max_memory_gb=TINY))
    assert "exceeds the memory budget" in caplog.text and "data.max_memory_gb" in caplog.text
    held = data.load(DataConfig(dataset=str(path), binarize=binarize))
    assert isinstance(mapped.train.stored, MappedRows) and isinstance(held.train.stored, torch.Tensor)
    assert np.array_equal(mapped.train.stored[:].numpy(), held.train.stored.numpy())
    assert isinstance(mapped.test.stored, MappedRows) == (binarize == "none")  # a fixed sample is drawn once
    assert torch.equal(mapped.test.stored[:], held.test.stored)
    with pytest.raises(DataError, match="read from disk in pieces"):
        _ = mapped.train.x
    with pytest.raises(DataError, match="resize it beforehand"):
        data.load(DataConfig(dataset=str(path), image_size=(4, 4), max_memory_gb=TINY))


def test_chunks_cover_the_batches_in_order():
    bounds = [(0, 4), (4, 8), (8, 12), (12, 14)]
    assert streaming.chunk_spans(bounds, 8) == [(0, 2), (2, 4)]
    assert streaming.chunk_spans(bounds, 1) == [(0, 1), (1, 2), (2, 3), (3, 4)]  # a batch bigger than a chunk


def test_training_from_disk_gives_the_weights_of_training_from_memory(tmp_path, monkeypatch, caplog):
    path = saved(tmp_path, RNG.integers(0, 256, (400, 1, 8, 8), dtype=np.uint8))
    monkeypatch.setattr(streaming, "CHUNK_BYTES", 64 * 3 * 64 + 7)  # a few batches a chunk, a partial one last
    runs = []
    for budget in (0.0, TINY):
        config = digits_config(**{"data.dataset": str(path), "data.binarize": "dynamic", "data.val_size": 0.1,
                                  "data.max_memory_gb": budget, "model.prior": "vamp", "model.prior_components": 5,
                                  "train.epochs": 2})
        with caplog.at_level(logging.INFO, logger="vaekit.training.run"):
            result = vaekit.train(config, tmp_path / f"run{budget}")
        runs.append(result)
    assert "training reads" in caplog.text and "from disk" in caplog.text
    held, streamed = (r.model.state_dict() for r in runs)
    assert all(torch.equal(held[k], streamed[k]) for k in held)
    assert runs[0].history[-1]["val_neg_elbo"] == runs[1].history[-1]["val_neg_elbo"]
    a = vaekit.evaluate(tmp_path / "run0.0", iw_samples=5)
    b = vaekit.evaluate(tmp_path / f"run{TINY}", iw_samples=5)
    assert a["nll"] == b["nll"] and a["neg_elbo"] == b["neg_elbo"] and a["n"] == b["n"] == 80
    with pytest.raises(DataError, match="use the val or test split"):
        data.evaluation_split(data.load(vaekit.load_config(tmp_path / f"run{TINY}").data), "train",
                              vaekit.load_config(tmp_path / f"run{TINY}").data)


def test_commands_read_data_on_disk_a_batch_at_a_time(tmp_path):
    path = saved(tmp_path, RNG.integers(0, 256, (300, 1, 8, 8), dtype=np.uint8))
    outputs = []
    for budget in (0.0, TINY):
        run = tmp_path / f"run{budget}"
        vaekit.train(digits_config(**{"data.dataset": str(path), "data.max_memory_gb": budget}), run)
        for command in (["anomaly", "--score", "elbo", "--split", "train"], ["embed", "--split", "test"]):
            out = tmp_path / f"{budget}-{command[0]}.csv"
            assert main([command[0], str(run), *command[1:], "-o", str(out)]) == 0
            outputs.append(out.read_text())
    assert outputs[:2] == outputs[2:] and len(outputs[0].splitlines()) == 217  # a header and 216 examples


def test_a_run_resumed_from_disk_continues_as_it_would_have_in_memory(tmp_path):
    path = saved(tmp_path, RNG.integers(0, 256, (300, 1, 8, 8), dtype=np.uint8))
    base = {"data.dataset": str(path), "data.binarize": "dynamic", "train.epochs": 2}
    whole = vaekit.train(digits_config(**base), tmp_path / "whole").model.state_dict()
    vaekit.train(digits_config(**{**base, "train.epochs": 1}), tmp_path / "split")
    resumed = vaekit.resume(tmp_path / "split", {"train.epochs": 2, "data.max_memory_gb": TINY}).model.state_dict()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_a_process_reads_only_its_part_of_each_global_batch(tmp_path, monkeypatch):
    source = MappedRows.open(saved(tmp_path, RNG.integers(0, 256, (50, 1, 4, 4), dtype=np.uint8)))
    perm, bounds = torch.randperm(50, generator=torch.Generator().manual_seed(0)), [(0, 16), (16, 32), (32, 48)]
    parts = [(8, 16), (8, 16), (8, 16)]  # rank 1 of 2
    read = []
    original = MappedRows.read_forwards
    monkeypatch.setattr(MappedRows, "read_forwards", lambda self, p: read.append(len(p)) or original(self, p))
    monkeypatch.setattr(streaming, "CHUNK_BYTES", 2 * 16 * 16)  # two global batches a chunk
    got = list(streaming.batches(source, perm, bounds, torch.device("cpu"), parts))
    assert read == [16, 8]  # its 8 rows of each of the 3 batches, in 2 chunks
    for xb, (begin, _), (a, b) in zip(got, bounds, parts, strict=True):
        assert torch.equal(xb, source.take(perm[begin + a : begin + b].numpy()))


def test_float_images_on_disk_are_checked_before_training(tmp_path):
    a = RNG.random((200, 1, 8, 8), dtype=np.float32)
    a[150, 0, 3, 3] = 2.0  # out of [0, 1], and no likelihood support would catch it under a Gaussian
    config = digits_config(**{"data.dataset": str(saved(tmp_path, a)), "data.max_memory_gb": TINY,
                              "model.likelihood": "gaussian"})
    with pytest.raises(vaekit.TrainingError, match=r"training examples 0\.\.\d+ span \[[0-9.e-]+, 2\]; expected"):
        vaekit.train(config)
    a[150, 0, 3, 3] = np.nan
    np.save(tmp_path / "images.npy", a)
    with pytest.raises(vaekit.VaekitError, match="NaN"):
        vaekit.train(config.override({"model.likelihood": "bernoulli"}))
