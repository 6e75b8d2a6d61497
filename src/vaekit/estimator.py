"""scikit-learn style estimators over vaekit: ``VAEEstimator`` (a transformer) and, in ``vaekit.detector``,
``VAEAnomalyDetector``.

They follow scikit-learn's conventions: ``__init__`` only stores its arguments, fitted attributes end in
``_``, ``get_params``/``set_params``/``clone`` work, and an unfitted estimator raises ``NotFittedError``.
Inputs are 2-d float arrays (examples, features); features are standardized with the training mean and
standard deviation unless ``standardize=False``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from vaekit import anomaly, data, training
from vaekit.config import Config
from vaekit.data.tabular import Standardizer

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data
except ImportError:  # pragma: no cover - older scikit-learn
    def validate_data(estimator, X, reset=True, **kwargs):
        return estimator._validate_data(X, reset=reset, **kwargs)


def _seed(random_state: Any) -> int:
    """A seed from scikit-learn's ``random_state``: an int as it is, None fresh randomness (NumPy's global
    generator, as scikit-learn's own estimators draw it), a RandomState a draw from it."""
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        return int(random_state)
    return int(check_random_state(random_state).randint(2**31 - 1))


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
                 lower_latent_dims: tuple[int, ...] = (), steps: int = 0) -> None:
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
        self.steps = steps

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
            "train.epochs": self.epochs, "train.steps": self.steps, "train.batch_size": self.batch_size,
            "train.lr": self.lr, "train.beta": self.beta, "train.device": self.device, "train.checkpoint_every": 0,
            "train.seed": _seed(self.random_state), "data.val_size": 0,
            # float32 whatever the CPU: auto's bfloat16 was measured on images, not on the tables (and the
            # anomaly suite's figures) these estimators are for
            "train.precision": "fp32",
        })

    def fit(self, X: Any, y: Any = None, callbacks: Sequence[training.Callback] = ()) -> VAEEstimator:
        """Train on the rows of X (y is ignored); ``callbacks`` watch the training (``vaekit.Callback``)."""
        X = validate_data(self, X, dtype=np.float32, ensure_min_samples=2)
        x = torch.from_numpy(np.ascontiguousarray(X))
        self.standardizer_ = Standardizer.fit(x) if self.standardize else None
        x = self._prepare(x)
        split = data.Split(x, None, "train", "none")
        result = training.train(self._config(X.shape[1]), callbacks=callbacks, splits=data.Splits(split, None, split))
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
        g = torch.Generator().manual_seed(_seed(random_state))
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


def __getattr__(name: str) -> Any:
    """``VAEAnomalyDetector`` lives in ``vaekit.detector``; it is importable from here as it always was."""
    if name == "VAEAnomalyDetector":
        from vaekit.detector import VAEAnomalyDetector

        return VAEAnomalyDetector
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
