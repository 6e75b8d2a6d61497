"""The model behind the server: loaded once, in eval mode, used under one lock and without gradients.

Everything here is plain Python and PyTorch (no web framework), so it can be used and tested on its own.
Requests arrive in *data units* (the units of the files the model was trained on) and outputs leave in them:
for a table model that means the server standardizes inputs with the statistics saved at training time and
undoes it on decoded outputs; for images data units and model units are the same.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vaekit import anomaly, checkpoint, data, embedding, generate
from vaekit.batches import floats
from vaekit.config import Config
from vaekit.data.tabular import Standardizer
from vaekit.errors import CheckpointError, DataError, VaekitError
from vaekit.model import VAE, likelihoods
from vaekit.plots import is_image_shape
from vaekit.serve import codec

log = logging.getLogger(__name__)

DEFAULT_EXAMPLES = 500  # test inputs kept for the page: thumbnails, the latent map, the ranking of dimensions
NLL_MAX_BATCH = 16  # importance sampling costs 1000 decoder passes per input: keep one request's work bounded
NLL_SAMPLES = 1000
LLR_MAX_BATCH = 64  # the likelihood ratio: two bounds of 100 importance samples each, 200 passes per input
BATCH_LIMITS = {"nll": NLL_MAX_BATCH, "llr": LLR_MAX_BATCH}  # per score name; others: the API's own
# Inputs of a likelihood without a bounded range (gaussian) must lie within this many units of the model's
# inputs (standard deviations of the training data, for a standardized table): the farthest plausible outlier
# is far inside, while inputs much farther out make the model's outputs and scores overflow float32.
MAX_ABS_INPUT = 1e6


@dataclass(frozen=True)
class Examples:
    """A few test inputs of the run's dataset (model units) with their label names, loaded once at start."""

    x: Tensor  # (N, *shape)
    y: Tensor | None  # (N,) label indices, when the data has labels
    names: tuple[str, ...] | None  # a label name per example
    source: str  # where they came from, e.g. "digits test split"


LatentMap = embedding.Map2D  # posterior means of the examples in 2-D (see embedding.pca_map)


class ModelService:
    """A trained VAE and what travels with it (threshold, standardization, examples), ready for requests."""

    def __init__(self, model: VAE, config: Config | None = None, threshold: anomaly.Threshold | None = None,
                 preprocess: Standardizer | None = None, examples: Examples | None = None) -> None:
        if threshold is not None and not math.isfinite(threshold.value):
            raise CheckpointError(f"the stored anomaly threshold is {threshold.value}, not a finite number")
        self.model = model.eval()  # the model is never trained here: dropout/batch-norm stay in inference mode
        self.config = config
        self.threshold = threshold
        self.preprocess = preprocess
        self.examples = examples
        self._lock = threading.Lock()  # one request at a time on the model: PyTorch already uses all cores
        self._device = next(model.parameters()).device
        self.bounds = input_bounds(model, preprocess)
        self._mu = None if examples is None else self._posterior_means(examples)
        self.ranking, self.kl, self.ranked_by = latent_ranking(model, examples, self._mu)
        self.map = None if self._mu is None else latent_map(self._mu.double().numpy())

    @classmethod
    def from_directory(cls, directory: str | Path, n_examples: int = DEFAULT_EXAMPLES, data_dir: str | None = None,
                       device: str = "cpu") -> ModelService:
        """Load the run in ``directory`` (checkpoint, threshold, standardization) and up to ``n_examples`` tests."""
        ckpt = checkpoint.resolve(directory)  # model, standardization and threshold check: of one checkpoint
        model, config = checkpoint.load_run(ckpt, device)
        examples = load_examples(config, n_examples, data_dir) if n_examples > 0 else None
        return cls(model, config, anomaly.load_threshold(ckpt), checkpoint.load_preprocess(ckpt), examples)

    @property
    def data_shape(self) -> tuple[int, ...]:
        return self.model.data_shape

    @property
    def is_image(self) -> bool:
        return is_image_shape(self.data_shape)

    def batch_limit(self, method: str | None) -> int | None:
        """The most inputs one request may score with ``method`` (None: the default score); None: no limit
        beyond the API's own on any batch."""
        name, _ = anomaly.parse_score(self.score_name(method), len(self.model.layers))
        return BATCH_LIMITS.get(name)

    def score_name(self, method: str | None) -> str:
        """The score ``method`` names; omitted: the stored threshold's score, else elbo."""
        return method or (self.threshold.score if self.threshold else "elbo")

    @contextmanager
    def _inference(self) -> Iterator[None]:
        with self._lock, torch.no_grad():
            yield

    # ---- requests ------------------------------------------------------------------------------------------

    def sample(self, n: int, temperature: float = 1.0, seed: int = 0, label: str | None = None) -> Tensor:
        """n decoded draws with z from the prior at temperature T, seeded; (n, *shape) in data units."""
        y = self.model.labels_named(label, n)
        with self._inference():
            x = self.model.sample(n, temperature, torch.Generator(self._device).manual_seed(seed), _on(y, self._device))
        return self._to_data_units(x)

    def decode(self, z: Sequence[Sequence[float]], label: str | None = None) -> Tensor:
        """E[x|z] for latent codes z (N, L); (N, *shape) in data units."""
        codes = self.codes(z)
        y = self.model.labels_named(label, len(codes))
        with self._inference():
            return self._to_data_units(generate.decode_mean(self.model, codes, y))

    def encode(self, x: Sequence[Any], label: str | None = None,
               layers: str = "top") -> tuple[Tensor, Tensor | None]:
        """The posterior q(z|x) of each input: its mean and log-variance, each (N, L); the log-variance is None
        for a posterior family without a closed-form variance (a flow). ``layers = "all"``: every layer's,
        top first, each given the posterior means above it, (N, sum of L)."""
        xt = self.inputs(x)
        y = self.model.labels_named(label, len(xt))
        with self._inference():
            chosen = embedding.layer_latents(self.model, xt.to(self._device), _on(y, self._device), layers)
            try:
                logvar = torch.cat([latent.qz_x.variance.log() for latent in chosen], dim=-1).cpu()
            except NotImplementedError:
                logvar = None
            return torch.cat([latent.mean for latent in chosen], dim=-1).cpu(), logvar

    def reconstruct(self, x: Sequence[Any], label: str | None = None) -> Tensor:
        """E[x|z = mu(x)] for each input; (N, *shape) in data units."""
        xt = self.inputs(x)
        y = self.model.labels_named(label, len(xt))
        with self._inference():
            return self._to_data_units(self.model.reconstruct(xt.to(self._device), _on(y, self._device)).cpu())

    def interpolate(self, x: Sequence[Any] | None = None, z: Sequence[Sequence[float]] | None = None,
                    steps: int = 10, method: str = "lerp", label: str | None = None) -> tuple[Tensor, Tensor]:
        """The path between two inputs' posterior means, or two codes: (codes (S, L), decoded (S, *shape))."""
        if (x is None) == (z is None) or len(x if x is not None else z) != 2:
            raise DataError("interpolate needs exactly two inputs x or exactly two latent codes z")
        if x is not None:
            mu, _ = self.encode(x, label)
            za, zb = mu
        else:
            za, zb = self.codes(z)
        codes = generate.path(za, zb, steps, method)
        return codes, self.decode(codes.tolist(), label)

    def score(self, x: Sequence[Any], label: str | None = None, method: str | None = None,
              details: bool = False) -> dict[str, Any]:
        """Anomaly scores (anomaly.py's, seeded), flags against the stored threshold when it is for this score,
        and with ``details`` each input's reconstruction and per-pixel (per-feature) contribution."""
        method = self.score_name(method)
        name, _ = anomaly.parse_score(method, len(self.model.layers))
        xt = self.inputs(x)
        if (most := BATCH_LIMITS.get(name)) is not None and len(xt) > most:
            raise DataError(f"the {method} score takes at most {most} inputs per request, got {len(xt)}")
        y = self.model.labels_named(label, len(xt))
        thr = self.threshold if self.threshold is not None and self.threshold.score == method else None
        with self._inference():
            samples = NLL_SAMPLES if name == "nll" else thr.n_samples if thr else None  # None: the score's default
            scores = anomaly.score(self.model, xt, method, samples, y=y)
            out: dict[str, Any] = {"scores": scores, "method": method, "threshold": thr,
                                   "flags": None if thr is None else (scores > thr.value)}
            if details:
                out["pixel_error"], recon = anomaly.explain(self.model, xt, method, y)
                out["reconstruction"] = self._to_data_units(recon)
        return out

    # ---- input checks --------------------------------------------------------------------------------------

    def inputs(self, items: Sequence[Any]) -> Tensor:
        """Request inputs (nested arrays or base64 PNGs, data units) as one (N, *shape) tensor in model units."""
        if not items:
            raise DataError("x is empty: send at least one input")
        x = codec.stack([codec.example_from_json(item, self.data_shape, i, self.bounds)
                         for i, item in enumerate(items)])
        x = self.preprocess(x.flatten(1)).reshape(x.shape) if self.preprocess is not None else x
        likelihoods.check_support(self.model.config.likelihood, x, "x")
        return x

    def codes(self, z: Sequence[Sequence[float]]) -> Tensor:
        """Latent codes as an (N, L) tensor, their length checked against the model's latent size."""
        if not z:
            raise DataError("z is empty: send at least one latent code")
        return torch.from_numpy(codec.array_from_json(z, (len(z), self.model.latent_dim), "z"))

    # ---- units ---------------------------------------------------------------------------------------------

    def _to_data_units(self, x: Tensor) -> Tensor:
        x = x.cpu()
        return x if self.preprocess is None else self.preprocess.inverse(x)

    def _posterior_means(self, ex: Examples) -> Tensor:
        with self._inference():
            return embedding.posterior_means(self.model, ex.x, 500, self.model.labels_of(ex.y, ex.source))

    def example_inputs(self, n: int) -> tuple[Tensor, tuple[str, ...] | None]:
        """The first ``n`` examples in data units and their label names."""
        if self.examples is None:
            raise DataError("this server has no examples: the run's dataset was not available at start")
        ex = self.examples
        return self._to_data_units(ex.x[:n]), None if ex.names is None else ex.names[:n]

    def info(self) -> dict[str, Any]:
        """What a client needs to know to talk to this model."""
        cfg = self.model.config
        support = likelihoods.get(cfg.likelihood).support
        config = self.config.to_dict() if self.config is not None else {"model": _plain(dataclasses.asdict(cfg))}
        return {
            "config": config, "data_shape": list(self.data_shape), "latent_dim": cfg.latent_dim,
            "likelihood": cfg.likelihood, "conditional": cfg.conditional,
            "labels": list(cfg.labels) if cfg.conditional and cfg.labels else None,
            "image": self.is_image, "support": None if support is None else list(support),
            "standardized": self.preprocess is not None,
            "threshold": None if self.threshold is None else dataclasses.asdict(self.threshold),
            "latent_ranking": {"dims": self.ranking, "kl": self.kl, "ranked_by": self.ranked_by},
            "layers": [layer.latent_dim for layer in self.model.layers],
            "scores": anomaly.available_scores(len(self.model.layers)),
            "examples": 0 if self.examples is None else len(self.examples.x),
            "examples_source": None if self.examples is None else self.examples.source,
        }


def input_bounds(model: VAE, preprocess: Standardizer | None) -> codec.Bounds:
    """The range of each input value in data units: the likelihood's, else MAX_ABS_INPUT model units around 0
    (per feature, mean +- MAX_ABS_INPUT standard deviations, for a standardized table)."""
    lk = likelihoods.get(model.config.likelihood)
    if lk.support is not None:
        low, high = (np.float64(v) for v in lk.support)
        return codec.Bounds(low, high, f"the range of the {lk.name} likelihood")
    if preprocess is None:
        return codec.Bounds(np.float64(-MAX_ABS_INPUT), np.float64(MAX_ABS_INPUT),
                            f"|x| <= {MAX_ABS_INPUT:g}: farther out the model's outputs overflow")
    mean = preprocess.mean.double().numpy().reshape(model.data_shape)
    std = preprocess.std.double().numpy().reshape(model.data_shape)
    return codec.Bounds(mean - MAX_ABS_INPUT * std, mean + MAX_ABS_INPUT * std,
                        f"within {MAX_ABS_INPUT:g} standard deviations of the training data's mean")


def load_examples(config: Config, n: int, data_dir: str | None = None) -> Examples | None:
    """The first ``n`` test inputs of the run's dataset, or None (logged) when the data is not available."""
    cfg = config.override({"data.data_dir": data_dir}).data if data_dir else config.data
    try:
        splits = data.load(cfg)
        test = data.evaluation_split(splits, "test", cfg)
    except (VaekitError, OSError) as e:  # the page then works without examples
        log.warning("serving without examples: cannot load %s (%s)", cfg.dataset, e)
        return None
    y = None if test.y is None else test.y[:n]
    classes = splits.classes or config.model.labels
    names = None if y is None else tuple(classes[i] if classes and 0 <= i < len(classes) else str(i)
                                         for i in y.tolist())
    return Examples(floats(test.stored[:n]).contiguous(), y, names, f"{cfg.dataset} test split ({test.binarization})")


def latent_ranking(model: VAE, examples: Examples | None,
                   mu: Tensor | None) -> tuple[list[int], list[float] | None, str]:
    """Latent dimensions, most informative first (``generate.rank_dimensions`` over the examples), their KL
    where that is what ranked them, and how they were ranked (by index where there are no examples)."""
    if examples is None or mu is None:
        return list(range(model.latent_dim)), None, "index (no data to rank by)"
    ranking = generate.rank_dimensions(model, examples.x, model.labels_of(examples.y, examples.source))
    return ranking.dims, ranking.scores.tolist() if ranking.measure == "kl" else None, ranking.ranked_by


def latent_map(mu: np.ndarray) -> LatentMap:
    """The 2-D map of posterior means mu (N, L): z itself for L <= 2, else PCA (``embedding.pca_map``)."""
    return embedding.pca_map(mu)


def _on(y: Tensor | None, device: torch.device) -> Tensor | None:
    return None if y is None else y.to(device)


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d))
