"""The static-buffer (CUDA-graph) training step, exercised eagerly on the CPU.

CI has no GPU: these tests run the exact step that is captured on CUDA, on the same buffers, and check it
against the ordinary loop. Capture itself is only exercised where a GPU is present.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import pytest
import torch

import vaekit
from vaekit import TrainingError
from vaekit.training import graphs, paths

from conftest import digits_config, split_sizes


@pytest.fixture
def static_on_cpu(monkeypatch):
    """Pretend the fast path is available on the CPU (the step runs eagerly, uncaptured)."""
    monkeypatch.setattr(graphs, "fast_path_blocker", lambda device, world, enabled: None)


def test_static_step_matches_the_ordinary_loop(static_on_cpu, monkeypatch):
    # the ordinary loop with autograd's gradients, as the static step computes them
    cfg = digits_config(**{"train.drop_last": True, "train.epochs": 2, "train.fused_step": False})
    static = vaekit.train(cfg)
    monkeypatch.undo()
    plain = vaekit.train(cfg)
    for k, v in plain.model.state_dict().items():
        assert torch.equal(static.model.state_dict()[k], v), k
    for a, b in zip(static.history, plain.history, strict=True):
        assert a["train_neg_elbo"] == b["train_neg_elbo"] and a["val_neg_elbo"] == b["val_neg_elbo"]


def test_fast_path_drops_the_last_partial_batch_and_says_so(static_on_cpu, caplog):
    cfg = digits_config(**{"train.epochs": 1})  # e.g. 1294 examples, batch 64: 20 full batches and 14 over
    full, partial = divmod(split_sizes(cfg)["train"], cfg.train.batch_size)
    assert partial
    with caplog.at_level(logging.INFO, logger="vaekit"):
        vaekit.train(cfg, callbacks=[steps := StepCounter()])
    assert steps.per_epoch == full
    assert f"dropping the last partial batch ({partial} examples)" in caplog.text


class StepCounter(vaekit.Callback):
    def on_train_start(self, config, steps_per_epoch):
        self.per_epoch = steps_per_epoch


def test_static_step_binarizes_dynamically_on_the_device():
    x = torch.rand(50, 1, 4, 4)
    seen = []

    def step_fn(xb, yb, beta):
        seen.append(xb.clone())
        return torch.stack([xb.sum(), xb.mean(), torch.tensor(0.0)])

    step = graphs.StaticStep(x, batch_size=10, n_steps=3, step_fn=step_fn, dynamic=True, capture=False)
    step.start_epoch()
    for i in range(3):
        step(torch.arange(10 * i, 10 * i + 10))
    assert all(set(b.unique().tolist()) <= {0.0, 1.0} for b in seen)
    assert step.step_no.item() == 3
    torch.testing.assert_close(step.step_terms[:, 0], torch.stack([b.sum() for b in seen]))
    step.start_epoch()
    assert step.step_no.item() == 0 and step.step_terms.abs().sum() == 0


def test_non_finite_loss_on_the_static_path_names_the_step(static_on_cpu, monkeypatch):
    real = paths.train_step
    calls = {"n": 0}

    def poisoned(*args):
        calls["n"] += 1
        terms = real(*args)
        return terms * float("nan") if calls["n"] == 5 else terms

    monkeypatch.setattr(paths, "train_step", poisoned)
    with pytest.raises(TrainingError, match="epoch 1, step 5"):
        vaekit.train(digits_config())


def test_fast_path_blocker_reasons():
    assert graphs.fast_path_blocker(torch.device("cuda"), 1, True) is None
    assert "not cuda" in graphs.fast_path_blocker(torch.device("cpu"), 1, True)
    assert "DistributedDataParallel" in graphs.fast_path_blocker(torch.device("cuda"), 2, True)
    assert "disabled" in graphs.fast_path_blocker(torch.device("cuda"), 1, False)


class RecordingStep(graphs.StaticStep):
    """The static step, remembering itself and counting the steps whose body ran in Python (eagerly, or once
    while being captured) rather than as a replay of the graph."""

    made: ClassVar[list[RecordingStep]] = []
    capture_allowed: ClassVar[bool] = True

    def __init__(self, *args, **kwargs) -> None:
        kwargs["capture"] = kwargs.get("capture", True) and self.capture_allowed
        super().__init__(*args, **kwargs)
        self.bodies = 0
        RecordingStep.made.append(self)

    def _body(self) -> None:
        self.bodies += 1
        super()._body()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; CI has none")
def test_captured_step_matches_eager_on_gpu(monkeypatch, caplog):
    """On a GPU the step is really captured: one graph, whose replays run every step after the warm-up and the
    capture, and whose weights are those of the very same static step run eagerly on the GPU (same buffers, same
    kernels, same random-number offsets), to float rounding; the ordinary eager loop (non-capturable Adam) agrees
    on the loss."""
    cfg = digits_config(**{"train.device": "cuda", "train.drop_last": True, "train.epochs": 2,
                           "data.binarize": "dynamic"})
    steps = 2 * (split_sizes(cfg)["train"] // cfg.train.batch_size)
    real = graphs.StaticStep
    monkeypatch.setattr(graphs, "StaticStep", RecordingStep)
    RecordingStep.made = []
    with caplog.at_level(logging.INFO, logger="vaekit"):
        graphed = vaekit.train(cfg)
    (step,) = RecordingStep.made
    assert step.graph is not None and "captured the training step as a CUDA graph" in caplog.text
    assert "capture failed" not in caplog.text and "not captured" not in caplog.text
    assert step.bodies == graphs.WARMUP_STEPS + 1 < steps  # the rest were replays
    monkeypatch.setattr(RecordingStep, "capture_allowed", False)
    eager = vaekit.train(cfg)
    assert RecordingStep.made[-1].graph is None and RecordingStep.made[-1].bodies == steps
    for k, v in eager.model.state_dict().items():
        torch.testing.assert_close(graphed.model.state_dict()[k], v, rtol=1e-4, atol=1e-5, msg=k)
    for a, b in zip(graphed.history, eager.history, strict=True):
        assert a["train_neg_elbo"] == pytest.approx(b["train_neg_elbo"], rel=1e-5, abs=1e-4)
    monkeypatch.setattr(graphs, "StaticStep", real)
    plain = vaekit.train(cfg.override({"train.cuda_graph": False}))
    for a, b in zip(graphed.history, plain.history, strict=True):
        assert a["train_neg_elbo"] == pytest.approx(b["train_neg_elbo"], rel=1e-3)


def test_static_step_matches_the_ordinary_loop_with_labels_warmup_and_iwae(static_on_cpu, monkeypatch):
    cfg = digits_config(**{"train.drop_last": True, "train.epochs": 2, "model.conditional": True,
                           "train.kl_warmup_steps": 30, "train.objective": "iwae", "train.iw_k": 3})
    static = vaekit.train(cfg)
    monkeypatch.undo()
    plain = vaekit.train(cfg)
    for k, v in plain.model.state_dict().items():
        assert torch.equal(static.model.state_dict()[k], v), k
    assert [r["beta"] for r in static.history] == [r["beta"] for r in plain.history] == [20 / 30, 1.0]
