"""Anomaly scores from a trained VAE, thresholds, and the threshold file stored with the model.

Higher scores are more anomalous. Each score is deterministic: the posterior draws come from a fixed seed.

A threshold is fitted for one model, so ``anomaly.json`` records the SHA-256 of the ``model.safetensors`` it
was fitted for (``checkpoint.model_digest``). Whatever writes a new model into the directory (``vaekit train
--overwrite``, a resumed or extended run, ``checkpoint.save``) leaves the file where it is: ``load_threshold``
compares the stamp with the current weights and ignores, with a logged warning, a threshold fitted for others.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vaekit import checkpoint, evaluation, hub, objectives
from vaekit.batches import batched
from vaekit.errors import CheckpointError, ConfigError
from vaekit.fileio import JSON_LIMIT, atomic_write_bytes, parse_json, read_regular
from vaekit.model import VAE
from vaekit.model.latent import total_kl

log = logging.getLogger(__name__)

SCORES = ("elbo", "nll", "recon", "kl", "llr")  # llr last: it is named llr>K
DEFAULT_SAMPLES = {"elbo": 10, "nll": 1000, "recon": 0, "kl": 10, "llr": 100}  # draws or importance samples per input
THRESHOLD_FILE = "anomaly.json"


@torch.no_grad()
def score(model: VAE, x: Tensor, method: str = "elbo", samples: int | None = None, seed: int = 0,
          batch_size: int = 1000, y: Tensor | None = None) -> Tensor:
    """Per-example anomaly score (N,), on the CPU; ``y`` are the labels a conditional model needs.

    ``elbo``: the negative ELBO with its expected reconstruction term averaged over ``samples`` posterior
    draws (default 10); ``nll``: the importance-sampled negative log-likelihood with ``samples`` importance
    samples (default 1000); ``recon``: the squared reconstruction error ||x - E[x|z = E_q[z]]||^2 (in the
    units of x; for tables, standardized units); ``kl``: the posterior's divergence from the prior,
    KL(q(z|x) || p(z)) summed over the layers, the ELBO's other term (closed-form where the model has it, else
    averaged over ``samples`` draws, default 10): how unusual the code of x is, however well it reconstructs;
    ``llr>K`` (``llr`` is ``llr>1``), for a hierarchy of more
    than K layers: the likelihood ratio L - L^{>K} of Havtorn et al. 2021 ("Hierarchical VAEs know what they
    don't know"), where L^{>K} draws the lowest K layers from their conditional priors, so that it scores x by
    its high-level latents only; both bounds from ``samples`` importance samples (default 100). The
    standard-normal noise behind the posterior draws comes from ``seed`` and is shared by all
    inputs, so a score depends only on its input: not on the batch, the order, or the caller's random state.
    """
    name, below = parse_score(method, len(model.layers))
    model.eval()
    y = None if y is None else y.to(model.device)  # x goes a batch at a time (it may be bytes, or on disk)
    k = samples if samples is not None else DEFAULT_SAMPLES[name]
    noise = torch.randn(k, model.noise_dim, generator=torch.Generator().manual_seed(seed)).to(model.device)  # (k, D)
    if name == "nll":
        return evaluation.importance_sampled_nll(model, x, k, eps=noise, y=y).cpu()
    if name == "recon":
        return batched(lambda xb, yb: (xb - model.reconstruct(xb, yb)).pow(2).flatten(1).sum(1), x, y,
                       batch_size, model.device).cpu()
    # the draws of a batch go through the decoder a chunk at a time: memory stays bounded for any count
    chunk = evaluation.sample_chunk(model, batch_size, model.device)
    if name == "llr":
        return batched(lambda xb, yb: _likelihood_ratio(model, xb, below, noise, yb, chunk), x, y,
                       batch_size, model.device).cpu()
    terms = _negative_elbo if name == "elbo" else _kl
    return batched(lambda xb, yb: terms(model, xb, noise, yb, chunk), x, y, batch_size, model.device).cpu()


def available_scores(layers: int) -> list[str]:
    """The scores a model with ``layers`` stochastic layers has: elbo, nll, recon, kl, and llr>K for K < layers."""
    return [*SCORES[:-1], *(f"llr>{k}" for k in range(1, layers))]


def parse_score(method: str, layers: int) -> tuple[str, int]:
    """("llr", K) for "llr>K" (and "llr"), (method, 0) for the others; a ConfigError for what cannot be scored."""
    name, _, below = method.partition(">")
    if name not in SCORES or (below and (name != "llr" or not below.isdigit())):
        raise ConfigError(f"unknown anomaly score {method!r}; valid scores: {', '.join(SCORES[:-1])}, llr>K")
    k = int(below or 1) if name == "llr" else 0
    if name == "llr" and not 1 <= k < layers:
        raise ConfigError(f"the {name}>{k} score compares bounds of a hierarchy with more than {k} stochastic "
                          f"layers; this model has {layers} (set model.lower_latent_dims, e.g. the hvae preset)")
    return name, k


def _likelihood_ratio(model: VAE, x: Tensor, below: int, noise: Tensor, y: Tensor | None, chunk: int) -> Tensor:
    """L - L^{>K} per input (B,): both importance-weighted over the same shared noise."""
    k = len(noise)
    return (objectives.iwae_bound(model, x, k, chunk, noise, y)
            - objectives.iwae_bound(model, x, k, chunk, noise, y, prior_below=below))


def _negative_elbo(model: VAE, x: Tensor, eps: Tensor, y: Tensor | None, chunk: int) -> Tensor:
    """-log p(x|z) averaged over the draws of ``eps`` (S, D), plus the KL; (B,)."""
    total = x.new_zeros(len(x))
    draw = model.passes(x, y)  # x encoded once for all the chunks
    for start in range(0, len(eps), chunk):
        part = eps[start : start + chunk]
        out = draw(None, part)  # z: (s, B, L)
        total = total - out.px_z.log_prob(x).sum(0) + len(part) * out.kl
    return total / len(eps)


def _kl(model: VAE, x: Tensor, eps: Tensor, y: Tensor | None, chunk: int) -> Tensor:
    """The KL over the layers averaged over the draws of ``eps`` (S, D); (B,). Nothing is decoded: a
    hierarchy's lower layers need each draw's path down the latents, not p(x|z)."""
    total = x.new_zeros(len(x))
    draw = model.inferences(x, y)
    for start in range(0, len(eps), chunk):
        part = eps[start : start + chunk]
        total = total + len(part) * total_kl(draw(None, part))
    return total / len(eps)


def pixel_map(model: VAE, x: Tensor, method: str = "elbo", y: Tensor | None = None) -> Tensor:
    """Where a score comes from, per pixel (summed over channels; (N, H, W) for images).

    For ``recon`` the squared error (x_i - E[x_i|z = E_q[z]])^2, whose sum is the recon score; for the
    others -log p(x_i | z = E_q[z]), the reconstruction part of the ELBO at the posterior mean (for kl and llr>K,
    which do not sum over pixels, it shows the reconstruction term alone).
    """
    return explain(model, x, method, y)[0]


@torch.no_grad()
def explain(model: VAE, x: Tensor, method: str = "elbo", y: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``pixel_map`` and the reconstruction E[x|z = E_q[z]] it compares x with, from one encode and decode."""
    model.eval()
    x, y = x.to(model.device), None if y is None else y.to(model.device)
    px_z = model(x, y, mean=True).px_z
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
    model_sha256: str | None = None  # the model.safetensors it was fitted for (save_threshold fills it in)


def threshold_from(scores: Tensor, contamination: float | None = None, quantile: float | None = None) -> float:
    """The score above which a ``contamination`` fraction lies, or the given ``quantile`` of the scores."""
    if (contamination is None) == (quantile is None):
        raise ConfigError("give exactly one of contamination or quantile")
    q = 1 - contamination if contamination is not None else quantile
    if not 0 < q < 1:
        raise ConfigError(f"the quantile must lie in (0, 1), got {q}")
    return float(np.quantile(scores.double().numpy(), q))


def save_threshold(directory: str | Path, t: Threshold) -> Path:
    """Write ``t`` to ``directory/anomaly.json``, stamped with the model it was fitted for.

    That is ``t.model_sha256`` when set, else the directory's current model: the caller fitted it just now.
    """
    directory = checkpoint.resolve(directory).directory  # a Hub id: the downloaded folder, refused just below
    hub.refuse_write(directory, THRESHOLD_FILE)
    if t.model_sha256 is None:
        t = replace(t, model_sha256=checkpoint.model_digest(directory))
    path = directory / THRESHOLD_FILE
    atomic_write_bytes(path, (json.dumps(asdict(t), indent=2) + "\n").encode())
    return path


def load_threshold(source: str | Path | checkpoint.CheckpointSet) -> Threshold | None:
    """The threshold stored in a run directory, or None when there is none or it was fitted for another model.

    Given a ``checkpoint.CheckpointSet``, it is checked against that set's model: the one a caller loaded.
    """
    directory = source.directory if isinstance(source, checkpoint.CheckpointSet) else Path(source)
    path = directory / THRESHOLD_FILE
    if not path.is_file():
        return None
    t = _read_threshold(path)
    digest = checkpoint.model_digest(source)
    # Without a stamp (a vaekit from before stamps) nothing says which model it belongs to, and applying the
    # threshold of a replaced model flags the wrong inputs silently: ignored, like a mismatch; refitting is cheap.
    if t.model_sha256 != digest:
        why = ("records no model (written by an older vaekit), so it cannot be checked against"
               if t.model_sha256 is None else "was fitted for another model than")
        log.warning("ignoring %s: it %s the current %s (SHA-256 %s...); refit it with `vaekit anomaly %s "
                    "--contamination ...`", path, why, checkpoint.WEIGHTS_FILE, digest[:12], directory)
        return None
    return t


MAX_THRESHOLD_SAMPLES = 100_000  # posterior or importance samples per score that a threshold file may ask for


def _read_threshold(path: Path) -> Threshold:
    try:
        d = parse_json(read_regular(path, JSON_LIMIT))
        stamp = d.get("model_sha256")
        if stamp is not None and not isinstance(stamp, str):
            raise TypeError(f"model_sha256 must be a string, got {stamp!r}")
        n = int(d["n_samples"])
        if not 1 <= n <= MAX_THRESHOLD_SAMPLES:  # each scored input would pay for them: a file could stall serve
            raise ValueError(f"n_samples = {n} is outside 1..{MAX_THRESHOLD_SAMPLES}")
        return Threshold(float(d["value"]), str(d["score"]), n, str(d["rule"]), stamp)
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from e
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path} is not a vaekit threshold file: {e}") from e


def auc_scores(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """ROC AUC and PR AUC (average precision) of scores against binary labels, 1 = anomaly."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    return {"roc_auc": float(roc_auc_score(labels, scores)), "pr_auc": float(average_precision_score(labels, scores))}
