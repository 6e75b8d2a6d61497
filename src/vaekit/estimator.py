"""scikit-learn style estimators over vaekit: ``VAEEstimator`` (a transformer) and ``VAEAnomalyDetector``.

They follow scikit-learn's conventions: ``__init__`` only stores its arguments, fitted attributes end in
``_``, ``get_params``/``set_params``/``clone`` work, and an unfitted estimator raises ``NotFittedError``.
Inputs are 2-d float arrays (examples, features); features are standardized with the training mean and
standard deviation unless ``standardize=False``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, OutlierMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from vaekit import anomaly, data, training
from vaekit.config import Config
from vaekit.data.tabular import Standardizer

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data
except ImportError:  # pragma: no cover - older scikit-learn
    def validate_data(estimator, X, reset=True, **kwargs):
        return estimator._validate_data(X, reset=reset, **kwargs)


class VAEEstimator(TransformerMixin, BaseEstimator):
    """A VAE on tabular data: ``transform`` gives posterior means, ``score_samples`` per-example log-likelihood
    bounds (the ELBO, or the importance-sampled log-likelihood with ``score_method="nll"``; for a hierarchy,
    minus the likelihood ratio with ``"llr>K"``).

    ``prior``, ``posterior`` and ``lower_latent_dims`` choose the model family (``vaekit.model.priors``,
    ``vaekit.model.posteriors``; layers below the top one for a hierarchy), as ``model.*`` in a config.
    """

    def __init__(self, latent_dim: int = 8, hidden: tuple[int, ...] = (128,), activation: str = "relu",
                 likelihood: str = "gaussian", obs_std: float = 1.0, epochs: int = 50, batch_size: int = 128,
                 lr: float = 1e-3, beta: float = 1.0, standardize: bool = True, score_method: str = "elbo",
                 n_score_samples: int = 10, device: str = "cpu", random_state: int | None = 0,
                 prior: str = "standard-normal", posterior: str = "diagonal-gaussian",
                 lower_latent_dims: tuple[int, ...] = ()) -> None:
        self.latent_dim = latent_dim
        self.hidden = hidden
        self.activation = activation
        self.likelihood = likelihood
        self.obs_std = obs_std
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.beta = beta
        self.standardize = standardize
        self.score_method = score_method
        self.n_score_samples = n_score_samples
        self.device = device
        self.random_state = random_state
        self.prior = prior
        self.posterior = posterior
        self.lower_latent_dims = lower_latent_dims

    def __sklearn_tags__(self):  # scikit-learn >= 1.6
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]  # computes in float32 and says so
        return tags

    def _more_tags(self) -> dict[str, Any]:  # older scikit-learn
        return {"preserves_dtype": [np.float32]}

    def _config(self, n_features: int) -> Config:
        return Config().override({
            "model.latent_dim": self.latent_dim, "model.hidden": list(self.hidden),
            "model.activation": self.activation, "model.likelihood": self.likelihood,
            "model.obs_std": self.obs_std, "model.data_shape": [n_features], "model.prior": self.prior,
            "model.posterior": self.posterior, "model.lower_latent_dims": list(self.lower_latent_dims),
            "train.epochs": self.epochs, "train.batch_size": self.batch_size, "train.lr": self.lr,
            "train.beta": self.beta, "train.device": self.device, "train.checkpoint_every": 0,
            "train.seed": 0 if self.random_state is None else int(self.random_state), "data.val_size": 0,
        })

    def fit(self, X: Any, y: Any = None) -> VAEEstimator:
        """Train on the rows of X (y is ignored)."""
        X = validate_data(self, X, dtype=np.float32, ensure_min_samples=2)
        x = torch.from_numpy(np.ascontiguousarray(X))
        self.standardizer_ = Standardizer.fit(x) if self.standardize else None
        x = self._prepare(x)
        split = data.Split(x, None, "train", "none")
        result = training.train(self._config(X.shape[1]), splits=data.Splits(split, None, split))
        self.model_ = result.model.eval()
        self.history_ = result.history
        return self

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return self.standardizer_(x) if self.standardizer_ is not None else x

    def _checked(self, X: Any) -> torch.Tensor:
        check_is_fitted(self, "model_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        return self._prepare(torch.from_numpy(np.ascontiguousarray(X)))

    def transform(self, X: Any) -> np.ndarray:
        """Posterior means mu(x), shape (n_samples, latent_dim)."""
        from vaekit.embedding import posterior_means

        x = self._checked(X)
        return posterior_means(self.model_, x).numpy()

    def inverse_transform(self, Z: Any) -> np.ndarray:
        """E[x|z] in the original feature units."""
        check_is_fitted(self, "model_")
        z = torch.as_tensor(np.asarray(Z, dtype=np.float32))
        with torch.no_grad():
            x = self.model_.decode(z).mean
        return self._unstandardize(x)

    def _unstandardize(self, x: torch.Tensor) -> np.ndarray:
        s = self.standardizer_
        return s.inverse(x).numpy() if s is not None else x.numpy()

    def sample(self, n_samples: int = 1, random_state: int | None = None) -> np.ndarray:
        """E[x|z] for z drawn from the model's prior, in the original feature units."""
        check_is_fitted(self, "model_")
        g = torch.Generator().manual_seed(0 if random_state is None else int(random_state))
        return self._unstandardize(self.model_.sample(n_samples, generator=g))

    def score_samples(self, X: Any) -> np.ndarray:
        """Per-example log-likelihood bound in nats (higher = more typical): the ELBO over
        ``n_score_samples`` draws, or the importance-sampled log p(x) with that many samples.
        """
        x = self._checked(X)
        n = self.n_score_samples
        return -anomaly.score(self.model_, x, self.score_method, n).numpy()  # float32, as computed

    def score(self, X: Any, y: Any = None) -> float:
        """Mean of ``score_samples``."""
        return float(np.mean(self.score_samples(X)))


class VAEAnomalyDetector(OutlierMixin, BaseEstimator):
    """Anomaly detection with a VAE, in scikit-learn's outlier-detector conventions.

    ``score_samples`` is minus the anomaly score (higher = more normal); ``decision_function`` is
    ``score_samples - offset_``, negative for outliers; ``predict`` returns +1 for inliers and -1 for
    outliers. ``threshold_`` is the anomaly score above which the ``contamination`` fraction of the
    training data lies. The defaults are the ``outliers`` preset (a small Gaussian VAE with beta = 4);
    ``lower_latent_dims`` makes it a hierarchy, which the likelihood-ratio score ``"llr>K"`` needs.

    For PyOD users: ``decision_scores_`` (the training data's anomaly scores, higher = more abnormal),
    ``labels_`` (their 0/1 outlier labels) and ``predict_proba`` are PyOD's; ``decision_function`` and
    ``predict`` keep scikit-learn's signs (negative and -1 for outliers), where PyOD's differ.
    """

    def __init__(self, contamination: float = 0.1, score_method: str = "elbo", latent_dim: int = 4,
                 hidden: tuple[int, ...] = (64,), epochs: int = 5, batch_size: int = 64, lr: float = 1e-3,
                 beta: float = 4.0, n_score_samples: int = 10, device: str = "cpu",
                 random_state: int | None = 0, lower_latent_dims: tuple[int, ...] = ()) -> None:
        self.contamination = contamination
        self.score_method = score_method
        self.latent_dim = latent_dim
        self.hidden = hidden
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.beta = beta
        self.n_score_samples = n_score_samples
        self.device = device
        self.random_state = random_state
        self.lower_latent_dims = lower_latent_dims

    def fit(self, X: Any, y: Any = None) -> VAEAnomalyDetector:
        """Train on X (unlabelled, possibly contaminated) and set the threshold; y is ignored."""
        if not 0 < self.contamination < 0.5:
            raise ValueError(f"contamination must lie in (0, 0.5), got {self.contamination}")
        self.vae_ = VAEEstimator(self.latent_dim, tuple(self.hidden), epochs=self.epochs, batch_size=self.batch_size,
                                 lr=self.lr, beta=self.beta, device=self.device,
                                 random_state=self.random_state,
                                 lower_latent_dims=tuple(self.lower_latent_dims)).fit(X)
        self.n_features_in_ = self.vae_.n_features_in_
        anomaly_scores = -self.score_samples(X)
        self.threshold_ = float(np.quantile(anomaly_scores, 1 - self.contamination))
        self.decision_scores_ = anomaly_scores  # PyOD's names: the training data's outlier scores ...
        self.labels_ = (anomaly_scores > self.threshold_).astype(int)  # ... and its 0/1 outlier labels
        self.offset_ = -self.threshold_
        return self

    def score_samples(self, X: Any) -> np.ndarray:
        """Minus the anomaly score of each row (higher = more normal)."""
        check_is_fitted(self, "vae_")
        x = self.vae_._checked(X)
        model = self.vae_.model_
        n = self.n_score_samples
        return -anomaly.score(model, x, self.score_method, n).double().numpy()

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
