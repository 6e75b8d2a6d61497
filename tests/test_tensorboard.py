"""TensorBoard logs of a run (the optional tensorboard extra), read back from the event files."""

from __future__ import annotations

import sys

import pytest
import torch

import vaekit
from vaekit.cli import main
from vaekit.tensorboard import TensorBoard

from conftest import digits_config

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                        reason="tensorboard is missing: pip install -e '.[dev]'")


def read_events(log_dir):
    acc = event_accumulator.EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_every_epoch_metric_and_kl_and_the_images_are_in_the_event_files(tmp_path):
    cfg = digits_config(**{"train.epochs": 5, "train.kl_warmup_epochs": 2})
    result = vaekit.train(cfg, callbacks=[TensorBoard(tmp_path, images_every=5)])
    events = read_events(tmp_path)
    tags = events.Tags()
    neg_elbo = [e.value for e in events.Scalars("loss/train_neg_elbo")]
    assert neg_elbo == pytest.approx([r["train_neg_elbo"] for r in result.history], rel=1e-6)
    assert [e.value for e in events.Scalars("beta")] == pytest.approx([0.5, 1, 1, 1, 1])
    assert len([t for t in tags["scalars"] if t.startswith("kl_per_dim/")]) == 4
    assert "loss/val_neg_elbo" in tags["scalars"] and "active_units" in tags["scalars"]
    assert {"samples", "reconstructions", "samples_final", "reconstructions_final"} <= set(tags["images"])
    assert [e.step for e in events.Images("samples")] == [5]
    text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"latent_dim": 4' in text and '"kl_warmup_epochs": 2.0' in text


def test_logging_leaves_the_training_itself_unchanged(tmp_path):
    cfg = digits_config(**{"train.epochs": 2, "data.binarize": "dynamic"})
    logged = vaekit.train(cfg, callbacks=[TensorBoard(tmp_path, images_every=1)]).model.state_dict()
    plain = vaekit.train(cfg).model.state_dict()
    for k, v in plain.items():
        assert torch.equal(logged[k], v), k


def test_a_hierarchy_logs_each_layers_kl_and_the_cli_flag_writes_logs(tmp_path):
    assert main(["train", "--dataset", "digits", "--epochs", "1", "--hidden", "16", "--latent-dim", "2",
                 "--lower-latent-dims", "3", "--quiet", "--device", "cpu", "--out", str(tmp_path / "run"),
                 "--tensorboard", str(tmp_path / "tb")]) == 0
    tags = read_events(tmp_path / "tb").Tags()["scalars"]
    assert {"kl/layer_0", "kl/layer_1"} <= set(tags)


def test_without_tensorboard_installed_the_error_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(vaekit.ConfigError, match=r"pip install 'vaekit\[tensorboard\]'"):
        vaekit.train(digits_config(**{"train.epochs": 1}), callbacks=[TensorBoard(tmp_path)])
