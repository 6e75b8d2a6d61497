"""The scikit-learn style estimators, including a selection of scikit-learn's own estimator checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

import vaekit
from vaekit.detector import bin_widths, dequantized
from vaekit.estimator import VAEAnomalyDetector, VAEEstimator

FAST = {"epochs": 2, "hidden": (16,), "latent_dim": 2}
FAST_DETECTOR = {"steps": 30, "hidden": (16,), "latent_dim": 2, "likelihood": "gaussian", "trim": 0.0,
                 "n_models": 1}  # one fit


def expected_failures(estimator):
    if isinstance(estimator, VAEAnomalyDetector):
        # scikit-learn wants float64 scores from outlier detectors and then compares a subset's scores at
        # rtol 1e-7; the network runs in float32, where matrix products blocked for another batch size
        # differ in the last bit (about 1e-7 relative, measured). Scores do not depend on the batch otherwise.
        return {"check_methods_subset_invariance": "float32 network, compared at float64 tolerance"}
    return {}


@parametrize_with_checks([VAEEstimator(**FAST), VAEAnomalyDetector(**FAST_DETECTOR)],
                         expected_failed_checks=expected_failures)
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


def test_detector_defaults_follow_the_data():
    """Sizes from the number of features, training length in optimizer steps with a floor: 88 rows train as
    long as 800 (the floor), 20,000 rows for ten epochs."""
    from vaekit import detector

    assert detector.auto_sizes(3) == ((32,), 2) and detector.auto_sizes(21) == ((42,), 6)
    assert detector.auto_sizes(1000) == ((256,), 16)
    assert detector.auto_steps(88, 64) == detector.auto_steps(800, 64) == detector.MIN_STEPS
    assert detector.auto_steps(20_000, 64) == 10 * 313
    det = VAEAnomalyDetector(likelihood="gaussian", trim=0.0, n_models=1, random_state=0).fit(
        np.random.default_rng(0).normal(size=(88, 21)))
    model = det.vae_.model_
    assert (model.config.hidden, model.latent_dim) == ((42,), 6)
    steps_per_epoch = 2  # 88 rows in batches of 64
    assert len(det.vae_.history_) * steps_per_epoch >= detector.MIN_STEPS


def test_detector_follows_scikit_learn_conventions():
    X = plane_data(120)
    fresh = [VAEAnomalyDetector(steps=50).fit(X).decision_scores_ for _ in range(2)]
    assert not np.allclose(*fresh)  # random_state=None: fresh randomness each fit
    seeded = [VAEAnomalyDetector(steps=50, random_state=3).fit(X).decision_scores_ for _ in range(2)]
    np.testing.assert_array_equal(*seeded)
    auto = VAEAnomalyDetector(steps=50, contamination="auto", random_state=0).fit(X)
    q1, q3 = np.quantile(auto.decision_scores_, [0.25, 0.75])
    assert auto.threshold_ == pytest.approx(q3 + 1.5 * (q3 - q1))  # Tukey's upper fence
    half = VAEAnomalyDetector(steps=50, contamination=0.5, random_state=0).fit(X)
    assert abs((half.predict(X) == -1).mean() - 0.5) < 0.02
    for bad in (0.0, 0.51, "most"):
        with pytest.raises(ValueError, match=r"contamination must be 'auto' or a fraction in \(0, 0.5\]"):
            VAEAnomalyDetector(contamination=bad).fit(X)
    with pytest.raises(ValueError, match="combine must be one of max-of-means, mean, got 'max'"):
        VAEAnomalyDetector(combine="max").fit(X)
    with pytest.raises(ValueError, match=r"trim must be a fraction in \[0, 0.5\), got 0.7"):
        VAEAnomalyDetector(trim=0.7).check_params()  # without data: a command refuses before reading any
    with pytest.raises(ValueError, match="VAEAnomalyDetector"):
        VAEAnomalyDetector(steps=50).fit(np.where(np.eye(120, 6) > 0, np.nan, X))
    opts = VAEAnomalyDetector(steps=50, standardize=False, likelihood="gaussian-learned",
                              hidden=(8,), latent_dim=3, random_state=0).fit(X)
    assert opts.vae_.standardizer_ is None and opts.vae_.model_.config.hidden == (8,)
    assert opts.vae_.model_.config.likelihood == "gaussian-learned" and opts.vae_.model_.latent_dim == 3


def test_the_default_detector_is_an_ensemble_of_two_likelihoods_fitted_without_its_worst_rows():
    X = np.vstack([plane_data(), np.random.default_rng(3).normal(scale=40, size=(15, 6)) + 100])
    det = VAEAnomalyDetector(steps=200, random_state=0).fit(X)
    assert [v.model_.config.likelihood for v in det.vaes_] == ["laplace"] * 2 + ["laplace-learned"] * 2
    assert len({v.random_state for v in det.vaes_}) == 4  # two seeds of each
    untrimmed = VAEAnomalyDetector(steps=50, likelihood="gaussian", trim=0.0, random_state=0).fit(X)
    for v in det.vaes_:  # standardized by the rows each was fitted on: without the planted outliers' spread
        assert (v.standardizer_.std < 0.95 * untrimmed.vae_.standardizer_.std).all()
    members = [-anomaly_score for anomaly_score in (v.score_samples(X) for v in det.vaes_)]
    scaled = [(m - np.median(m)) / np.subtract(*np.quantile(m, [0.75, 0.25])) for m in members]
    of_each = [np.mean(scaled[:2], axis=0), np.mean(scaled[2:], axis=0)]  # each likelihood's seeds averaged
    np.testing.assert_allclose(det.decision_scores_, np.maximum(*of_each), rtol=1e-5, atol=1e-6)
    assert (of_each[0] > of_each[1]).any() and (of_each[1] > of_each[0]).any()  # both kinds decide some rows
    np.testing.assert_allclose(det.score_samples(X), -det.decision_scores_, rtol=1e-5, atol=1e-6)
    assert np.median(det.decision_scores_[-15:]) > np.quantile(det.decision_scores_[:-15], 0.9)
    averaged = clone(det).set_params(combine="mean").fit(X)
    np.testing.assert_allclose(averaged.decision_scores_, np.mean(scaled, axis=0), rtol=1e-5, atol=1e-6)
    three = VAEAnomalyDetector(steps=50, likelihood="gaussian", n_models=3, trim=0.0, random_state=0).fit(X)
    assert len({v.random_state for v in three.vaes_}) == 3


def test_bin_widths_are_each_features_grid_step_and_the_noise_rounds_back_to_the_data():
    X = np.column_stack([np.tile([0.0, 1.0], 50), np.tile([0.0, 2.0, 4.0, 6.0], 25), np.linspace(0, 1, 100),
                         np.full(100, 3.0)]).astype(np.float32)  # binary, a grid of step 2, continuous, constant
    widths = bin_widths(X)
    assert widths.tolist() == [1.0, 2.0, 0.0, 0.0]
    noisy = dequantized(X, widths, np.random.default_rng(0))
    assert noisy.dtype == np.float32
    assert (np.abs(noisy - X) <= widths / 2 + 1e-6).all() and (noisy[:, :2] != X[:, :2]).all()
    np.testing.assert_array_equal(np.round(noisy[:, :2] / widths[:2]) * widths[:2], X[:, :2])
    np.testing.assert_array_equal(noisy[:, 2:], X[:, 2:])


def test_a_rare_flag_does_not_rank_rows_above_the_outliers_once_dequantized():
    """A binary feature unrelated to the outliers, its rare value on 10% of the rows. A learned-variance Gaussian
    fitted without its 30% worst rows has not seen that value, and its variance on the feature shrinks: without
    dequantization most of the rows it ranks first are flagged ones; with it, about the base rate."""
    rng = np.random.default_rng(1)
    X = plane_data(400)
    X[:20] += rng.normal(scale=10, size=(20, 6))  # off the plane: the outliers
    flag = (rng.random(400) < 0.1).astype(np.float64)
    X = np.column_stack([X, flag])
    params = {"likelihood": "gaussian-learned", "n_models": 1, "steps": 300, "hidden": (16,), "latent_dim": 2,
              "random_state": 0}
    flagged_first = {}
    for dequantize in (True, False):
        detector = VAEAnomalyDetector(dequantize=dequantize, **params).fit(X)
        assert detector.bin_widths_.tolist() == [0.0] * 6 + ([1.0] if dequantize else [0.0])
        flagged_first[dequantize] = flag[np.argsort(detector.score_samples(X))[:40]].mean()
    assert flagged_first[True] < 0.35 < 0.5 < flagged_first[False]


def test_the_detector_reports_its_fitting_steps_inside_a_progress_block(capsys):
    """Inside a command's progress block the fit counts every optimizer step of every member: 300 rows in batches
    of 64 are 5 steps an epoch, so steps=40 is 8 epochs and the brief fit's 10 steps 2 epochs; the full fit sees
    the 210 rows left by trim=0.3, 4 steps an epoch, 10 epochs: 10 + 40 = 50 steps a member, 4 members."""
    import io

    from vaekit import progress

    X = plane_data(300)
    out = io.StringIO()
    with progress.report("detect", stream=out, interval=0):
        VAEAnomalyDetector(steps=40, random_state=0).fit(X)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("fitting 4 VAEs: 1/200 steps") and lines[-1].startswith("fitting 4 VAEs: 199/200")
    capsys.readouterr()
    VAEAnomalyDetector(steps=40, random_state=0, n_models=1).fit(X)  # outside a progress block: nothing said
    assert capsys.readouterr() == ("", "")


def test_the_latent_neighbour_score_leaves_a_row_out_of_its_own_neighbours():
    X = np.vstack([plane_data(), np.random.default_rng(3).normal(scale=40, size=(15, 6)) + 100])
    det = VAEAnomalyDetector(score_method="knn", n_neighbors=1, steps=300, random_state=0).fit(X)
    codes = det.vae_.transform(X)
    d = np.linalg.norm(codes[:, None] - codes[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    np.testing.assert_allclose(det.decision_scores_, d.min(1), rtol=1e-4, atol=1e-5)  # nearest other row
    np.testing.assert_allclose(det.score_samples(X), -det.decision_scores_)  # training rows score as new ones
    assert np.median(det.decision_scores_[-15:]) > np.median(det.decision_scores_[:-15])


def test_the_latent_isolation_forest_scores_the_codes_and_combines_with_the_elbo():
    X = np.vstack([plane_data(), np.random.default_rng(3).normal(scale=40, size=(15, 6)) + 100])
    alone = VAEAnomalyDetector(score_method="iforest", likelihood="gaussian", steps=300, random_state=0).fit(X)
    codes = alone.vae_.transform(X)
    np.testing.assert_allclose(alone.decision_scores_, -alone.forest_.score_samples(codes))  # the codes' isolation
    assert alone.forest_.n_features_in_ == codes.shape[1] == alone.vae_.model_.latent_dim
    assert np.median(alone.decision_scores_[-15:]) > np.quantile(alone.decision_scores_[:-15], 0.9)
    assert len(alone.vaes_) == 1  # the codes of one VAE: the default ensemble's other members would go unread
    both = VAEAnomalyDetector(score_method="elbo+iforest", likelihood="gaussian", steps=300, random_state=0).fit(X)
    elbos = [-v.score_samples(X) for v in both.vaes_]  # n_models = 2 seeds
    forest = -both.forest_.score_samples(both.vae_.transform(X))
    scaled = [(s - np.median(s)) / np.subtract(*np.quantile(s, [0.75, 0.25])) for s in (*elbos, forest)]
    assert len(scaled) == 3  # the seeds' ELBOs averaged, the codes' isolation a kind of score of its own
    np.testing.assert_allclose(both.decision_scores_, np.maximum(np.mean(scaled[:2], axis=0), scaled[2]),
                               rtol=1e-4, atol=1e-5)


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


def test_the_detect_command_is_the_detector_on_a_table(tmp_path, capsys):
    from vaekit.cli import main

    X = np.vstack([plane_data(), np.random.default_rng(3).normal(scale=40, size=(15, 6)) + 100])
    y = np.r_[np.zeros(300), np.ones(15)]
    table = tmp_path / "rows.csv"
    np.savetxt(table, np.column_stack([X, y]), delimiter=",", header="a,b,c,d,e,f,outlier", comments="")
    out = tmp_path / "scores.csv"
    assert main(["detect", str(table), "--label-column", "outlier", "--seed", "4", "--steps", "100",
                 "-o", str(out)]) == 0
    written = np.loadtxt(out, delimiter=",", skiprows=1)
    det = VAEAnomalyDetector(random_state=4, steps=100).fit(X.astype(np.float32))
    np.testing.assert_allclose(written[:, 1], -det.score_samples(X.astype(np.float32)), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(written[:, 2], det.predict(X.astype(np.float32)) == -1)
    report = capsys.readouterr().out
    assert f"{int(written[:, 2].sum())} flagged" in report and "ROC AUC" in report
    np.savetxt(tmp_path / "narrow.csv", np.column_stack([X[:, :5], y]), delimiter=",", header="a,b,c,d,e,outlier",
               comments="")
    assert main(["detect", str(table), "--label-column", "outlier", "--score-table", str(tmp_path / "narrow.csv"),
                 "-o", str(out)]) == 2
    assert "narrow.csv has 5 feature columns" in capsys.readouterr().err
    assert main(["detect", str(table), "--contamination", "most"]) == 2
    assert "--contamination 'most'" in capsys.readouterr().err
    for args, message in ((["--contamination", "0.7"], "contamination must be 'auto' or a fraction in (0, 0.5], "
                           "got 0.7"), (["--steps", "0"], "steps must be >= 1")):  # the detector's own checks
        assert main(["detect", str(table), *args, "-o", str(tmp_path / "none.csv")]) == 2
        printed = capsys.readouterr()
        assert message in printed.err and not (tmp_path / "none.csv").exists()
        assert "fitting" not in printed.out  # refused before any work starts


def test_score_samples_is_the_elbo_computed_independently():
    """Monte-Carlo E_q[log p(x|z)] minus the closed-form KL, from the model's own distributions."""
    import torch
    from torch.distributions import kl_divergence

    X = plane_data(80)
    est = VAEEstimator(latent_dim=2, hidden=(16,), epochs=300, n_score_samples=4000).fit(X)
    x, model = est._checked(X[:6]), est.model_
    with torch.no_grad():
        q = model.encode(x)
        z = q.sample((4000,))  # (S, B, L)
        kl = kl_divergence(q, model.prior())  # (B,)
        expected = model.decode(z).log_prob(x).mean(0) - kl
    np.testing.assert_allclose(est.score_samples(X[:6]), expected.numpy(), atol=0.08)  # Monte-Carlo error ~0.02
    assert kl.max() > 0.5  # so a score that left the KL out, or counted it twice, would miss this row


def test_estimators_train_in_float32_whatever_the_cpu(monkeypatch):
    """auto's bfloat16 was measured on images; a wide table (its step above auto's multiply-adds) on a CPU with
    native bf16 still trains in float32, as the anomaly suite measured the detector."""
    from vaekit import devices
    from vaekit.training import fused

    monkeypatch.setattr(devices, "cpu_bf16_isa", lambda: "AVX512-BF16")
    est = VAEEstimator(hidden=(512,), latent_dim=16, epochs=1, batch_size=128, random_state=0)
    config = est._config(300)
    assert config.train.precision == "fp32"
    model = vaekit.VAE(config.model)
    macs = fused.multiply_adds(model, 128)
    assert macs >= devices.AUTO_BF16_MIN_MACS  # large enough that auto would take bf16 for a Bernoulli model
    assert devices.resolve_precision("auto", torch.device("cpu"), macs, "bernoulli")[0] == "bf16"
    assert devices.resolve_precision("auto", torch.device("cpu"), macs, model.config.likelihood)[0] == "fp32"
