"""Anomaly scores from a trained VAE, thresholds, and the threshold file stored with the model.

Higher scores are more anomalous. Each score is deterministic: the posterior draws come from a fixed seed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.distributions import kl_divergence

from vaekit import evaluation
from vaekit.errors import CheckpointError, ConfigError
from vaekit.fileio import atomic_write_bytes
from vaekit.model import VAE

SCORES = ("elbo", "nll", "recon")
THRESHOLD_FILE = "anomaly.json"


@torch.no_grad()
def score(model: VAE, x: Tensor, method: str = "elbo", n_samples: int = 10, iw_samples: int = 1000,
          seed: int = 0, batch_size: int = 1000, y: Tensor | None = None) -> Tensor:
    """Per-example anomaly score (N,), on the CPU; ``y`` are the labels a conditional model needs.

    ``elbo``: the negative ELBO with its expected reconstruction term averaged over ``n_samples`` posterior
    draws; ``nll``: the importance-sampled negative log-likelihood with ``iw_samples`` samples; ``recon``:
    the squared reconstruction error ||x - E[x|z = mu(x)]||^2 (in the units of x; for tables, standardized
    units). The standard-normal draws behind z = mu + sigma * eps come from
    ``seed`` and are shared by all inputs, so a score depends only on its input: not on the batch, the
    order, or the caller's random state.
    """
    if method not in SCORES:
        raise ConfigError(f"unknown anomaly score {method!r}; valid scores: {', '.join(SCORES)}")
    model.eval()
    device = next(model.parameters()).device
    x, y = x.to(device), None if y is None else y.to(device)
    k = iw_samples if method == "nll" else n_samples
    eps = torch.randn(k, model.latent_dim, generator=torch.Generator().manual_seed(seed)).to(device)  # (k, L)
    if method == "nll":
        return evaluation.importance_sampled_nll(model, x, iw_samples, eps=eps, y=y).cpu()
    return torch.cat([_batch_score(model, x[s : s + batch_size], method, eps,
                                   None if y is None else y[s : s + batch_size])
                      for s in range(0, len(x), batch_size)]).cpu()


def _batch_score(model: VAE, x: Tensor, method: str, eps: Tensor, y: Tensor | None) -> Tensor:
    qz_x = model.encode(x, y)
    if method == "recon":
        return (x - model.decode(qz_x.mean, y).mean).pow(2).flatten(1).sum(1)
    z = qz_x.mean + qz_x.stddev * eps[:, None, :]  # (S, B, L)
    recon = -model.decode(z, y).log_prob(x).mean(0)  # (B,)
    return recon + kl_divergence(qz_x, model.prior())


def pixel_map(model: VAE, x: Tensor, method: str = "elbo", y: Tensor | None = None) -> Tensor:
    """Where a score comes from, per pixel (summed over channels; (N, H, W) for images).

    For ``recon`` the squared error (x_i - E[x_i|z = mu])^2, whose sum is the recon score; for the
    likelihood scores -log p(x_i | z = mu), the reconstruction part of the ELBO at the posterior mean.
    """
    return explain(model, x, method, y)[0]


@torch.no_grad()
def explain(model: VAE, x: Tensor, method: str = "elbo", y: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``pixel_map`` and the reconstruction E[x|z = mu(x)] it compares x with, from one encode and decode."""
    model.eval()
    device = next(model.parameters()).device
    x, y = x.to(device), None if y is None else y.to(device)
    px_z = model.decode(model.encode(x, y).mean, y)
    recon = px_z.mean
    per = (x - recon).pow(2) if method == "recon" else -px_z.base_dist.log_prob(x)  # (N, *shape)
    return (per.sum(1) if per.dim() == 4 else per).cpu(), recon.cpu()


@dataclass(frozen=True)
class Threshold:
    """Scores above ``value`` are flagged; how it was chosen travels with it."""

    value: float
    score: str
    n_samples: int
    rule: str  # e.g. "contamination 0.05 of the validation split"


def threshold_from(scores: Tensor, contamination: float | None = None, quantile: float | None = None) -> float:
    """The score above which a ``contamination`` fraction lies, or the given ``quantile`` of the scores."""
    if (contamination is None) == (quantile is None):
        raise ConfigError("give exactly one of contamination or quantile")
    q = 1 - contamination if contamination is not None else quantile
    if not 0 < q < 1:
        raise ConfigError(f"the quantile must lie in (0, 1), got {q}")
    return float(np.quantile(scores.double().numpy(), q))


def save_threshold(directory: str | Path, t: Threshold) -> Path:
    path = Path(directory) / THRESHOLD_FILE
    atomic_write_bytes(path, (json.dumps(asdict(t), indent=2) + "\n").encode())
    return path


def load_threshold(directory: str | Path) -> Threshold | None:
    path = Path(directory) / THRESHOLD_FILE
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_bytes())
        return Threshold(float(d["value"]), str(d["score"]), int(d["n_samples"]), str(d["rule"]))
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is not a vaekit threshold file: {e}") from e


def auc_scores(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """ROC AUC and PR AUC (average precision) of scores against binary labels, 1 = anomaly."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    return {"roc_auc": float(roc_auc_score(labels, scores)), "pr_auc": float(average_precision_score(labels, scores))}
