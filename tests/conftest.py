from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vaekit import VAE, Config

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No test reads the user's cache or environment, and none can reach the network by accident."""
    monkeypatch.setenv("VAEKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VAEKIT_DATA", raising=False)
    torch.manual_seed(0)


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.skip(f"MNIST reference data not present at {SHARED_DATA} (CI provides it)")
    return SHARED_DATA


def tiny_model(likelihood: str = "bernoulli", shape=(1, 4, 4), latent: int = 3, hidden=(16,)) -> VAE:
    cfg = Config().override({"model.data_shape": list(shape), "model.likelihood": likelihood,
                             "model.latent_dim": latent, "model.hidden": list(hidden)})
    return VAE(cfg.model)


def digits_config(**overrides) -> Config:
    base = {"data.dataset": "digits", "train.epochs": 2, "train.batch_size": 64, "model.hidden": [32],
            "model.latent_dim": 4, "train.device": "cpu"}
    base.update(overrides)
    return Config().override(base)
