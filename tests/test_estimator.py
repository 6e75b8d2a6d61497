"""The scikit-learn style estimators, including a selection of scikit-learn's own estimator checks."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from vaekit.estimator import VAEAnomalyDetector, VAEEstimator

FAST = {"epochs": 2, "hidden": (16,), "latent_dim": 2}


def expected_failures(estimator):
    if isinstance(estimator, VAEAnomalyDetector):
        # scikit-learn wants float64 scores from outlier detectors and then compares a subset's scores at
        # rtol 1e-7; the network runs in float32, where matrix products blocked for another batch size
        # differ in the last bit (about 1e-7 relative, measured). Scores do not depend on the batch otherwise.
        return {"check_methods_subset_invariance": "float32 network, compared at float64 tolerance"}
    return {}


@parametrize_with_checks([VAEEstimator(**FAST), VAEAnomalyDetector(**FAST)], expected_failed_checks=expected_failures)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def plane_data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 2)) @ rng.normal(size=(2, 6)) + 0.05 * rng.normal(size=(n, 6))) * 10 + 100


def test_transform_inverse_transform_and_sample():
    X = plane_data()
    est = VAEEstimator(latent_dim=2, hidden=(32,), epochs=30).fit(X)
    Z = est.transform(X)
    assert Z.shape == (300, 2)
    np.testing.assert_array_equal(Z, est.transform(X))  # posterior means: deterministic
    X_hat = est.inverse_transform(Z)
    assert X_hat.shape == X.shape
    # reconstructions are in the original units and much closer to X than the column means are
    assert np.mean((X_hat - X) ** 2) < 0.5 * np.mean((X - X.mean(0)) ** 2)
    S = est.sample(50, random_state=1)
    assert S.shape == (50, 6)
    np.testing.assert_array_equal(S, est.sample(50, random_state=1))


def test_score_samples_is_higher_for_typical_rows():
    X = plane_data()
    est = VAEEstimator(latent_dim=2, hidden=(32,), epochs=30).fit(X)
    outliers = plane_data(20, seed=1) + np.random.default_rng(2).normal(scale=30, size=(20, 6))
    assert est.score_samples(X).mean() > est.score_samples(outliers).mean()
    assert est.score(X) == pytest.approx(est.score_samples(X).mean())
    nll = clone(est).set_params(score_method="nll").fit(X)
    assert nll.score_samples(X[:5]).shape == (5,)


def test_detector_conventions():
    X = np.vstack([plane_data(), np.random.default_rng(3).normal(scale=40, size=(15, 6)) + 100])
    det = VAEAnomalyDetector(contamination=0.05, epochs=20).fit(X)
    pred = det.predict(X)
    assert set(np.unique(pred)) <= {-1, 1}
    assert abs((pred == -1).mean() - 0.05) < 0.02  # the contamination rate on the training data
    np.testing.assert_allclose(det.decision_function(X), det.score_samples(X) - det.offset_)
    assert det.threshold_ == -det.offset_
    assert (pred[-15:] == -1).mean() > 0.6  # most planted outliers are flagged


def test_unfitted_use_raises_and_params_round_trip():
    est = VAEEstimator(latent_dim=3)
    with pytest.raises(NotFittedError):
        est.transform(np.zeros((2, 3)))
    assert clone(est).get_params()["latent_dim"] == 3
    assert est.set_params(epochs=7).epochs == 7
    with pytest.raises(ValueError, match="contamination"):
        VAEAnomalyDetector(contamination=0.7).fit(plane_data())


def test_detector_defaults_are_the_outliers_preset():
    """VAEAnomalyDetector() trains the model the CLI's ``--preset outliers`` trains (and the benchmark measures)."""
    from vaekit.config import preset

    det = VAEAnomalyDetector().fit(np.random.default_rng(0).normal(size=(80, 3)))
    vae = det.vae_
    cfg = preset("outliers")
    assert (vae.latent_dim, tuple(vae.hidden), vae.likelihood, vae.obs_std, vae.activation) == (
        cfg.model.latent_dim, tuple(cfg.model.hidden), cfg.model.likelihood, cfg.model.obs_std, cfg.model.activation)
    assert (vae.epochs, vae.batch_size, vae.lr, vae.beta) == (
        cfg.train.epochs, cfg.train.batch_size, cfg.train.lr, cfg.train.beta)


@pytest.mark.parametrize("family", [{"prior": "mog"}, {"prior": "vamp"}, {"posterior": "iaf"},
                                    {"lower_latent_dims": (3,)}])
def test_the_estimator_takes_every_model_family(family):
    X = plane_data(120)
    est = VAEEstimator(latent_dim=2, hidden=(16,), epochs=3, **family).fit(X)
    assert est.get_params()[next(iter(family))] == next(iter(family.values()))
    assert len(est.model_.layers) == 1 + len(family.get("lower_latent_dims", ()))
    assert est.model_.config.prior == family.get("prior", "standard-normal")
    assert est.model_.config.posterior == family.get("posterior", "diagonal-gaussian")
    assert est.transform(X).shape == (120, 2) and est.inverse_transform(est.transform(X)).shape == X.shape
    assert np.isfinite(est.score_samples(X)).all() and est.sample(4).shape == (4, 6)


def test_the_detector_scores_the_likelihood_ratio_of_a_hierarchy():
    X = np.vstack([plane_data(), np.random.default_rng(3).normal(scale=40, size=(15, 6)) + 100])
    det = VAEAnomalyDetector(contamination=0.05, epochs=5, lower_latent_dims=(3,), score_method="llr>1").fit(X)
    assert len(det.vae_.model_.layers) == 2
    pred = det.predict(X)
    assert abs((pred == -1).mean() - 0.05) < 0.02
    with pytest.raises(Exception, match="this model has 1"):
        VAEAnomalyDetector(epochs=1, score_method="llr").fit(X)


def test_the_detector_has_pyods_fitted_attributes_and_outlier_probabilities():
    X = np.vstack([plane_data(), np.random.default_rng(3).normal(scale=40, size=(15, 6)) + 100])
    det = VAEAnomalyDetector(contamination=0.05, epochs=20).fit(X)
    np.testing.assert_allclose(det.decision_scores_, -det.score_samples(X))  # higher = more abnormal
    np.testing.assert_array_equal(det.labels_, (det.predict(X) == -1).astype(int))
    proba = det.predict_proba(X)
    assert proba.shape == (len(X), 2) and np.allclose(proba.sum(1), 1) and proba.min() >= 0
    order = np.argsort(det.decision_scores_)
    assert np.all(np.diff(proba[order, 1]) >= 0)  # the outlier probability rises with the score
    assert proba[order[0], 1] == 0 and proba[order[-1], 1] == 1
    with pytest.raises(NotFittedError):
        VAEAnomalyDetector().predict_proba(X)
