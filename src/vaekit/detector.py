"""``VAEAnomalyDetector``: anomaly detection on tables with a VAE, in scikit-learn's outlier-detector conventions.

The detector adapts to its data: training runs for a number of optimizer steps with a floor (an epoch of 88 rows is
two steps, of 30,000 rows hundreds), and the network's width and latent size follow the number of features. By
default it is an ensemble of four VAEs, two seeds of each of two Laplace likelihoods, whose -log grows with the
absolute reconstruction error, not its square: magnitudes count, but a few large values (in the training rows, or
in one heavy-tailed feature) do not outweigh the rest as squared errors do. One has a fixed scale (close to a
median-regression fit: it ranks by distance and catches extreme values), the other learns each feature's scale per
row (a sharper density: good where outliers break the features' dependencies). Each is fitted after leaving out the
30% of rows a brief first fit explains worst, so that outliers in the training data (up to a third of the rows in
some real tables) are not learned as normal. Features whose values repeat (codes, counts, ratings, rounded
measurements) are dequantized: each member trains on them plus uniform noise one grid step wide, because a
continuous density fitted to a handful of values shrinks its scale towards zero there and then scores any value it
has not seen (a rare category left out by the trimming) as nearly impossible. Each member's score is scaled by its
training scores' median and interquartile range; the members of one likelihood (its seeds) are averaged, and a
row's score is the largest of those averages, so a row that either kind of model finds abnormal is flagged: the
"maximization of average" of Aggarwal & Sathe 2015 ("Theoretical foundations and algorithms for outlier ensembles";
PyOD's ``moa``), with the likelihoods as its groups. The average over seeds lowers each kind's variance; the
maximum keeps an anomaly that one kind sees from being diluted by the other, which sees it less (the fixed-scale
model catches extreme values, the learned-scale model discounts them, a larger scale explaining them, and catches
broken dependencies). The defaults were chosen on benchmarks/anomaly_suite.py (README: "Tabular anomaly
detection").

Scores: the model's own (``elbo``, ``recon``, ``nll``, ``kl``, ``llr>K``: ``vaekit.anomaly.score``), or in the
latent space ``knn``, the distance from an input's posterior mean to its k-th nearest training code, ``iforest``,
the isolation depth of the code in an IsolationForest fitted on the training codes, and ``elbo+knn`` or
``elbo+iforest``, combined with the ELBO.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, OutlierMixin, clone
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import NearestNeighbors
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from vaekit import anomaly, progress
from vaekit.errors import ConfigError
from vaekit.estimator import VAEEstimator, validate_data
from vaekit.training import Callback

MIN_STEPS = 1000  # optimizer steps at least: below this a VAE has not left its initial state
EPOCHS = 10  # beyond the floor, passes over the data
MAX_STEPS = 20_000  # a cap on fitting time for large tables
LATENT_SCORES = ("knn", "elbo+knn", "iforest", "elbo+iforest")
COMBINATIONS = ("max-of-means", "mean")
SAME_CODE = 1e-5  # codes this close are one row's (a subset's codes may differ from the whole's in the last bit)


def auto_steps(n_rows: int, batch_size: int) -> int:
    """Optimizer steps for ``n_rows`` training rows: ``EPOCHS`` passes, at least ``MIN_STEPS``."""
    per_epoch = math.ceil(n_rows / batch_size)
    return min(MAX_STEPS, max(MIN_STEPS, EPOCHS * per_epoch))


def auto_sizes(n_features: int) -> tuple[tuple[int, ...], int]:
    """(hidden widths, latent size) for ``n_features`` inputs: a latent code of about a quarter of the features
    (2 to 16) and a hidden layer of twice the features (32 to 256), so the bottleneck compresses every table."""
    return (min(256, max(32, 2 * n_features)),), min(16, max(2, math.ceil(n_features / 4)))


def bin_widths(X: np.ndarray) -> np.ndarray:
    """Each feature's grid step: the smallest gap between its distinct values where some value repeats (a
    feature on a grid), 0 where none does (a continuous feature) or all rows agree (a constant)."""
    widths = np.zeros(X.shape[1])
    for j, column in enumerate(X.T):
        values = np.unique(column)
        if 1 < len(values) < len(column):
            widths[j] = float(np.diff(values).min())
    return widths


def dequantized(X: np.ndarray, widths: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """X plus uniform noise over each value's bin, (-width/2, width/2) per feature: a continuous variable whose
    rounding gives X back (Theis et al. 2016, "A note on the evaluation of generative models"). The noise is
    drawn in X's dtype and for the gridded columns alone: a large table costs one copy and that noise."""
    grid = np.flatnonzero(widths)
    noise = rng.random((len(X), len(grid)), dtype=X.dtype)
    noise -= 0.5
    noise *= widths[grid].astype(X.dtype)
    out = X.copy()
    out[:, grid] += noise
    return out


class VAEAnomalyDetector(OutlierMixin, BaseEstimator):
    """Anomaly detection with a VAE, in scikit-learn's outlier-detector conventions.

    ``score_samples`` is minus the anomaly score (higher = more normal); ``decision_function`` is
    ``score_samples - offset_``, negative for outliers; ``predict`` returns +1 for inliers and -1 for
    outliers. ``threshold_`` is the anomaly score above which the ``contamination`` fraction of the training
    data lies; ``contamination="auto"`` puts it at Tukey's upper fence of the training scores (the third
    quartile plus 1.5 interquartile ranges) instead of assuming a fraction. ``hidden``, ``latent_dim`` and
    ``steps`` left at None follow the data (``auto_sizes``, ``auto_steps``); ``random_state=None`` draws fresh
    randomness. ``likelihood`` names one likelihood or several (one ensemble member each), ``n_models`` the
    members per likelihood (different seeds; a latent score alone, ``knn`` or ``iforest``, reads one VAE's
    codes and fits that one), ``trim`` the fraction of training rows left out of each member's fit (0: none),
    ``dequantize`` whether features whose values repeat train with uniform noise of their grid step
    (``bin_widths_``; rows are always scored as given). ``combine`` joins the members' scaled scores:
    ``"max-of-means"`` takes, per row, the largest of the means over each likelihood's members (a latent score,
    combined with the ELBO, counts as one more kind), ``"mean"`` the mean of them all. ``lower_latent_dims``
    makes the models hierarchies, which the likelihood-ratio score ``"llr>K"`` needs.

    For PyOD users: ``decision_scores_`` (the training data's anomaly scores, higher = more abnormal),
    ``labels_`` (their 0/1 outlier labels) and ``predict_proba`` are PyOD's; ``decision_function`` and
    ``predict`` keep scikit-learn's signs (negative and -1 for outliers), where PyOD's differ.
    """

    def __init__(self, contamination: float | str = 0.1, score_method: str = "elbo",
                 latent_dim: int | None = None, hidden: tuple[int, ...] | None = None, steps: int | None = None,
                 epochs: int | None = None, batch_size: int = 64, lr: float = 1e-3, beta: float = 1.0,
                 likelihood: str | tuple[str, ...] = ("laplace", "laplace-learned"), standardize: bool = True,
                 n_neighbors: int = 5, n_score_samples: int = 10, device: str = "cpu", random_state: int | None = None,
                 lower_latent_dims: tuple[int, ...] = (), trim: float = 0.3, n_models: int = 2,
                 dequantize: bool = True, combine: str = "max-of-means") -> None:
        self.contamination = contamination
        self.score_method = score_method
        self.latent_dim = latent_dim
        self.hidden = hidden
        self.steps = steps
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.beta = beta
        self.likelihood = likelihood
        self.standardize = standardize
        self.n_neighbors = n_neighbors
        self.n_score_samples = n_score_samples
        self.device = device
        self.random_state = random_state
        self.lower_latent_dims = lower_latent_dims
        self.trim = trim
        self.n_models = n_models
        self.dequantize = dequantize
        self.combine = combine

    def fit(self, X: Any, y: Any = None) -> VAEAnomalyDetector:
        """Train on X (unlabelled, possibly contaminated) and set the threshold; y is ignored."""
        self.check_params()
        X = validate_data(self, X, dtype=np.float32, ensure_min_samples=2)
        rng = check_random_state(self.random_state)  # None: fresh randomness, as scikit-learn's estimators
        self.bin_widths_ = bin_widths(X) if self.dequantize else np.zeros(X.shape[1])
        members = self._members
        with progress.loop(len(members) * self._planned_steps(len(X)), "step", f"fitting {len(members)} VAEs") as bar:
            hooks = () if bar is None else (_CountSteps(bar),)  # inside a command's progress.report block
            self.vaes_ = [self._fit_model(X, int(rng.randint(2**31 - 1)), lik, hooks) for lik in members]
        self.vae_ = self.vaes_[0]
        codes = self.vae_.transform(X) if self._reads_latents else None
        if codes is not None and self.score_method.endswith("knn"):
            self.neighbors_ = NearestNeighbors(n_neighbors=min(self.n_neighbors, len(X) - 1)).fit(codes)
        elif codes is not None:
            self.forest_ = IsolationForest(random_state=int(rng.randint(2**31 - 1))).fit(codes)
        parts = self._parts(X, codes)
        self.scales_ = [(float(np.median(p)), _iqr(p)) for p in parts]
        anomaly_scores = self._combine(parts)
        self.threshold_ = self._threshold(anomaly_scores)
        self.decision_scores_ = anomaly_scores  # PyOD's names: the training data's outlier scores ...
        self.labels_ = (anomaly_scores > self.threshold_).astype(int)  # ... and its 0/1 outlier labels
        self.offset_ = -self.threshold_
        return self

    @property
    def _members(self) -> list[str]:
        """The likelihood of each ensemble member: ``n_models`` of each, or one VAE of the first likelihood where
        the score reads its latent codes alone (``knn``, ``iforest``: the first member's codes)."""
        likelihoods = [self.likelihood] if isinstance(self.likelihood, str) else list(self.likelihood)
        if self.score_method in ("knn", "iforest"):
            return likelihoods[:1]
        return [lik for lik in likelihoods for _ in range(self.n_models)]

    def _fit_model(self, X: np.ndarray, seed: int, likelihood: str, hooks: tuple[Callback, ...] = ()) -> VAEEstimator:
        """The VAE: with ``trim``, a brief first fit (a quarter of the steps) finds the rows it explains worst,
        and the full fit leaves that fraction out, so that a cluster of outliers in the training data is not
        learned as normal. Each member draws its own dequantization noise (``bin_widths_``)."""
        if self.bin_widths_.any():
            X = dequantized(X, self.bin_widths_, np.random.default_rng(seed))
        est = self._estimator(X.shape, seed, likelihood)
        if not self.trim:
            return est.fit(X, callbacks=hooks)
        first = clone(est).set_params(**self._brief(est)).fit(X, callbacks=hooks)
        s = -first.score_samples(X)
        return est.fit(X[s <= np.quantile(s, 1 - self.trim)], callbacks=hooks)

    @staticmethod
    def _brief(est: VAEEstimator) -> dict[str, int]:
        return {"steps": max(1, est.steps // 4)} if est.steps else {"epochs": max(1, est.epochs // 4)}

    def _planned_steps(self, n_rows: int) -> int:
        """About how many optimizer steps one member's fits take (training rounds steps up to whole epochs)."""
        def steps(rows: int, est: VAEEstimator) -> int:
            per_epoch = math.ceil(rows / self.batch_size)
            return per_epoch * (math.ceil(est.steps / per_epoch) if est.steps else est.epochs)

        est = self._estimator((n_rows, 1), 0, "gaussian")
        kept = n_rows - int(self.trim * n_rows)
        return steps(kept, est) + (steps(n_rows, clone(est).set_params(**self._brief(est))) if self.trim else 0)

    def check_params(self) -> None:
        """ConfigError (a ValueError, as scikit-learn raises) naming the first argument out of its range. ``fit``
        calls it; a caller may call it first, to refuse a bad argument before reading any data."""
        c = self.contamination
        if not (c == "auto" or (isinstance(c, (int, float)) and 0 < c <= 0.5)):
            raise ConfigError(f"contamination must be 'auto' or a fraction in (0, 0.5], got {c!r}")
        if not 0 <= self.trim < 0.5:
            raise ConfigError(f"trim must be a fraction in [0, 0.5), got {self.trim!r}")
        if self.n_neighbors < 1:
            raise ConfigError(f"n_neighbors must be >= 1, got {self.n_neighbors}")
        if self.combine not in COMBINATIONS:
            raise ConfigError(f"combine must be one of {', '.join(COMBINATIONS)}, got {self.combine!r}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"steps must be >= 1 (or None: from the data), got {self.steps}")

    def _estimator(self, shape: tuple[int, int], seed: int, likelihood: str) -> VAEEstimator:
        n, d = shape
        hidden, latent = auto_sizes(d)
        steps = self.steps if self.steps is not None else (0 if self.epochs else auto_steps(n, self.batch_size))
        return VAEEstimator(latent if self.latent_dim is None else self.latent_dim,
                            hidden if self.hidden is None else tuple(self.hidden), likelihood=likelihood,
                            epochs=self.epochs or 1, steps=steps, batch_size=self.batch_size, lr=self.lr,
                            beta=self.beta, standardize=self.standardize, device=self.device, random_state=seed,
                            lower_latent_dims=tuple(self.lower_latent_dims))

    @property
    def _reads_latents(self) -> bool:
        return self.score_method in LATENT_SCORES

    def _parts(self, X: Any, codes: np.ndarray | None = None) -> list[np.ndarray]:
        """The anomaly scores the method combines, each (n,); ``codes``: X's latent codes, when already made."""
        parts = []
        if "elbo" in self.score_method or not self._reads_latents:  # X is validated: members only standardize it
            method = "elbo" if self._reads_latents else self.score_method
            x, n = torch.from_numpy(np.ascontiguousarray(X)), self.n_score_samples
            parts += [anomaly.score(v.model_, v._prepare(x), method, n).double().numpy() for v in self.vaes_]
        if self._reads_latents:
            codes = self.vae_.transform(X) if codes is None else codes
            parts.append(self._knn_distance(codes) if self.score_method.endswith("knn")
                         else -self.forest_.score_samples(codes).astype(np.float64))
        return parts

    def _knn_distance(self, codes: np.ndarray) -> np.ndarray:
        """Distance from each code to its k-th nearest training code, a training row not counting as its own
        neighbour: one neighbour at distance 0 (the row itself, or its exact copy) is set aside, so a training
        row scores as a new input would and the threshold fitted on the training rows holds for new ones."""
        k = self.neighbors_.n_neighbors
        distances = self.neighbors_.kneighbors(codes, n_neighbors=min(k + 1, self.neighbors_.n_samples_fit_))[0]
        itself = distances[:, 0] <= SAME_CODE
        kth = np.where(itself, distances[:, min(k, distances.shape[1] - 1)], distances[:, k - 1])
        return kth.astype(np.float64)

    def _combine(self, parts: list[np.ndarray]) -> np.ndarray:
        """One anomaly score per row from the parts (``_parts``), each scaled by its training median and IQR."""
        if len(parts) == 1:
            return parts[0]
        scaled = [(p - center) / scale for p, (center, scale) in zip(parts, self.scales_, strict=True)]
        if self.combine == "mean":
            return np.mean(scaled, axis=0)
        kinds = self._kinds(len(parts))
        means = [np.mean([z for z, k in zip(scaled, kinds, strict=True) if k == kind], axis=0)
                 for kind in dict.fromkeys(kinds)]
        return np.max(means, axis=0)

    def _kinds(self, n_parts: int) -> list[str]:
        """What made each part: its member's likelihood, and "latent" for a latent score (the last part)."""
        return [v.likelihood for v in self.vaes_] + ["latent"] * (n_parts - len(self.vaes_))

    def _threshold(self, scores: np.ndarray) -> float:
        if self.contamination == "auto":  # Tukey's upper fence
            return float(np.quantile(scores, 0.75)) + 1.5 * _iqr(scores, constant=0.0)
        return anomaly.threshold_from(torch.from_numpy(scores), contamination=self.contamination)

    def score_samples(self, X: Any) -> np.ndarray:
        """Minus the anomaly score of each row (higher = more normal)."""
        check_is_fitted(self, "vae_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        return -self._combine(self._parts(X))

    def decision_function(self, X: Any) -> np.ndarray:
        """``score_samples(X) - offset_``: negative for outliers."""
        check_is_fitted(self, "offset_")
        return self.score_samples(X) - self.offset_

    def predict(self, X: Any) -> np.ndarray:
        """+1 for inliers, -1 for outliers."""
        return np.where(self.decision_function(X) < 0, -1, 1)

    def predict_proba(self, X: Any) -> np.ndarray:
        """(n_samples, 2): the probability of being an inlier and an outlier, PyOD's "linear" conversion: the
        anomaly score min-max scaled by the training data's scores (``decision_scores_``), clipped to [0, 1]."""
        check_is_fitted(self, "decision_scores_")
        lo, hi = float(self.decision_scores_.min()), float(self.decision_scores_.max())
        outlier = np.clip((-self.score_samples(X) - lo) / ((hi - lo) or 1.0), 0.0, 1.0)
        return np.column_stack([1.0 - outlier, outlier])


class _CountSteps(Callback):
    """Each optimizer step of a member's fit, counted on the detector's progress bar."""

    def __init__(self, bar: progress.Progress) -> None:
        self.bar = bar

    def on_step(self, epoch: int, step: int) -> None:
        self.bar.update(1)


def _iqr(scores: np.ndarray, constant: float = 1.0) -> float:
    """The interquartile range, or ``constant`` where it is 0 (a constant score: 1 keeps a scale finite)."""
    q1, q3 = np.quantile(scores, [0.25, 0.75])
    return float(q3 - q1) or constant
