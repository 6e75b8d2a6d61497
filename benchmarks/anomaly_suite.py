"""A development suite for tabular anomaly detection: many tasks in ten families, detectors side by side.

The defaults of ``VAEAnomalyDetector`` are chosen on this suite's mean ROC AUC with development seeds, and
reported with seeds kept apart from those, so that no default is fitted to the three ODDS sets alone.

Families (every task: a stratified 60/40 split per seed, detectors fitted on the unlabelled, contaminated
training part, ROC AUC on the test part, features standardized with the training part's statistics):

- ``odds``: the three ODDS sets in ../shared/data/odds (cardio, pendigits, wbc), as PyOD's benchmark uses them.
- ``local``, ``global``, ``dependency``, ``clustered``: the four synthetic anomaly types of ADBench (Han et al.
  2022, section 4.2), generated from the inliers of real tables (the ODDS inliers, scikit-learn's breast-cancer
  benign rows, wine and digits), 5% anomalies each, made with every feature min-max scaled to [0, 1]. Local:
  a Gaussian mixture fitted to the inliers (components by BIC), sampled with its covariances scaled by 5.
  Global: uniform in 1.1 times each feature's range. Dependency: each feature drawn independently from its
  inlier marginal (the correlations broken, every marginal kept). Clustered: the mixture with its means
  scaled by 5.
- ``classes``: tables scikit-learn ships, one class held out as the outliers at several contamination rates
  (breast cancer's malignant rows at 2, 5 and 10%; each wine class at 10%; five digits at 5%).
- ``dense``: held-out classes as 20 to 35% of the rows (breast cancer, wine, iris).
- ``discrete``: six of those real tasks (cardio, wbc, breast cancer at 5%, the wine classes) with three
  irrelevant binary features appended, or with every other feature binned into four levels.
- ``heavy``: the same six with three irrelevant zero-inflated, heavy-tailed features appended.
- ``images``: MNIST and Fashion-MNIST (../shared/data), 5,000 test images each pooled to 14 x 14 pixels (up to
  196 features, most of them zero-inflated), classes 0 and 5 held out at 5%: real outliers in a table wider
  and longer than the others (ODDS sets reach 274 features and 49,097 rows).

Detectors: ``vaekit`` (``VAEAnomalyDetector()``, the defaults), ``vaekit-old`` (the ``outliers`` preset before
this suite: 64 units, z = 4, 5 epochs, beta = 4, -ELBO), ``iforest`` (scikit-learn's IsolationForest),
``knn`` and ``ae`` (PyOD's KNN and AutoEncoder with their defaults, when PyOD is installed), and any
``--vae NAME='{"key": value}'`` variant of ``VAEAnomalyDetector``'s arguments.

    VAEKIT_DATA=../shared/data python benchmarks/anomaly_suite.py --first-seed 5 --seeds 5
    python benchmarks/anomaly_suite.py --seeds 3 --detectors vaekit,iforest --vae big='{"latent_dim": 8}'
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn import datasets
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import train_test_split

from vaekit.data import tabular
from vaekit.data.mnist import read_idx
from vaekit.estimator import VAEAnomalyDetector

Task = tuple[str, str, np.ndarray, np.ndarray]  # family, name, features (n, d), labels (1 = outlier)
Detector = Callable[[np.ndarray, np.ndarray, int], np.ndarray]  # (train, test, seed) -> test outlier scores
ODDS = ("cardio", "pendigits", "wbc")
SYNTHETIC = ("local", "global", "dependency", "clustered")
OLD_DEFAULTS = {"hidden": (64,), "latent_dim": 4, "epochs": 5, "beta": 4.0, "batch_size": 64, "likelihood": "gaussian",
                "trim": 0.0, "score_method": "elbo"}  # the outliers preset, VAEAnomalyDetector's defaults before


def odds_tasks(data_dir: Path) -> list[Task]:
    tables = [tabular.read(data_dir / "odds" / f"{name}.mat") for name in ODDS]
    return [("odds", name, t.x.astype(np.float64), t.y.astype(int)) for name, t in zip(ODDS, tables, strict=True)]


def base_tables(data_dir: Path) -> dict[str, np.ndarray]:
    """Inliers of real tables, the material the synthetic anomalies are made from."""
    bases = {name: x[y == 0] for _, name, x, y in odds_tasks(data_dir)}
    cancer = datasets.load_breast_cancer()
    bases["breast-cancer"] = cancer.data[cancer.target == 1]  # 1 = benign
    bases["wine"] = datasets.load_wine().data
    digits = datasets.load_digits().data
    bases["digits"] = digits[:, digits.std(axis=0) > 0]
    return bases


def synthesize(x: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """5% anomalies of ADBench's ``kind`` made from inliers ``x``, in the min-max scaled space of ``x`` (every
    feature in [0, 1], as ADBench prepares its tables), then mapped back."""
    lo, span = x.min(axis=0), np.ptp(x, axis=0) + 1e-12
    u, n = (x - lo) / span, max(5, round(0.05 * len(x)))
    if kind == "global":
        out = rng.uniform(-0.05, 1.05, size=(n, u.shape[1]))
    elif kind == "dependency":
        out = np.stack([rng.choice(u[:, j], size=n) for j in range(u.shape[1])], axis=1)
    else:
        gmm = _mixture(u, int(rng.integers(2**31)))
        if kind == "local":
            gmm.covariances_ = gmm.covariances_ * 5.0
        else:  # clustered: the means scaled by 5 move each cluster away from the origin of [0, 1]^d
            gmm.means_ = gmm.means_ * 5.0
        gmm.random_state = int(rng.integers(2**31))
        out = gmm.sample(n)[0]
    return out * span + lo


def _mixture(z: np.ndarray, seed: int) -> GaussianMixture:
    """The Gaussian mixture of 1..5 components with the lowest BIC on ``z``."""
    fits = [GaussianMixture(k, reg_covar=1e-3, random_state=seed).fit(z) for k in range(1, 6)]
    return min(fits, key=lambda g: g.bic(z))


def synthetic_tasks(data_dir: Path) -> list[Task]:
    tasks = []
    for i, (base, x) in enumerate(base_tables(data_dir).items()):
        for j, kind in enumerate(SYNTHETIC):
            out = synthesize(x, kind, np.random.default_rng(1000 * i + j))  # the data is fixed; splits vary
            tasks.append((kind, base, np.vstack([x, out]), np.r_[np.zeros(len(x), int), np.ones(len(out), int)]))
    return tasks


def held_out(x: np.ndarray, y: np.ndarray, cls: int, rate: float, name: str, family: str = "classes") -> Task:
    """Class ``cls`` as the outliers, subsampled (fixed seed) to ``rate`` of all rows (all of them where the
    class has fewer)."""
    inliers, outliers = x[y != cls], x[y == cls]
    n = max(3, round(rate / (1 - rate) * len(inliers)))
    pick = np.random.default_rng(cls).choice(len(outliers), size=min(n, len(outliers)), replace=False)
    return (family, f"{name}-{cls}@{rate:g}", np.vstack([inliers, outliers[pick]]),
            np.r_[np.zeros(len(inliers), int), np.ones(len(pick), int)])


def class_tasks() -> list[Task]:
    cancer, wine, digits = datasets.load_breast_cancer(), datasets.load_wine(), datasets.load_digits()
    tasks = [held_out(cancer.data, cancer.target, 0, rate, "breast-cancer") for rate in (0.02, 0.05, 0.1)]
    tasks += [held_out(wine.data, wine.target, c, 0.1, "wine") for c in range(3)]
    keep = digits.data.std(axis=0) > 0
    tasks += [held_out(digits.data[:, keep], digits.target, c, 0.05, "digits") for c in (0, 3, 5, 7, 9)]
    return tasks


def dense_tasks() -> list[Task]:
    """Held-out classes as a large share of the rows (20 to 35%): outliers that a fit on the contaminated
    training part may learn as normal (ODDS sets reach 36%)."""
    cancer, wine, iris = datasets.load_breast_cancer(), datasets.load_wine(), datasets.load_iris()
    tasks = [held_out(cancer.data, cancer.target, 0, rate, "breast-cancer", "dense") for rate in (0.2, 0.35)]
    tasks += [held_out(wine.data, wine.target, c, 0.3, "wine", "dense") for c in range(3)]
    return tasks + [held_out(iris.data, iris.target, c, 0.3, "iris", "dense") for c in (1, 2)]


def discrete_tasks(data_dir: Path) -> list[Task]:
    """Real tasks with discrete columns, as real tables have (flags, codes, ratings): each base with three
    irrelevant binary features whose rare value has 10% of the rows appended (``+flags``), and with every other
    feature binned into four levels at its quartiles (``/binned``). ADBench measures robustness to irrelevant
    features (Han et al. 2022, section 4.4); these make them discrete, where a continuous density is fragile."""
    tasks = []
    for i, (name, (x, y)) in enumerate(_robustness_bases(data_dir).items()):
        flags = (np.random.default_rng(i).random((len(x), 3)) < 0.1).astype(x.dtype)
        tasks.append(("discrete", f"{name}+flags", np.hstack([x, flags]), y))
        binned = x.copy()
        for j in range(0, x.shape[1], 2):
            binned[:, j] = np.digitize(x[:, j], np.unique(np.quantile(x[:, j], [0.25, 0.5, 0.75])))
        tasks.append(("discrete", f"{name}/binned", binned, y))
    return tasks


def heavy_tasks(data_dir: Path) -> list[Task]:
    """The six bases (``_robustness_bases``) with three irrelevant zero-inflated, heavy-tailed features
    appended (lognormal on 10% of the rows, 0 elsewhere), as amounts and counts are: a likelihood that sums
    squared errors lets their tails outweigh the features that matter."""
    tasks = []
    for i, (name, (x, y)) in enumerate(_robustness_bases(data_dir).items()):
        rng = np.random.default_rng(100 + i)
        amounts = (rng.random((len(x), 3)) < 0.1) * rng.lognormal(size=(len(x), 3))
        tasks.append(("heavy", f"{name}+amounts", np.hstack([x, amounts]), y))
    return tasks


def image_tasks(data_dir: Path, rows: int = 5000) -> list[Task]:
    """Held-out classes of MNIST and Fashion-MNIST: ``rows`` test images (a fixed sample), 2 x 2 pooled to
    14 x 14 and with their constant pixels dropped, classes 0 and 5 held out at 5%."""
    tasks = []
    for name in ("mnist", "fashion-mnist"):
        x = read_idx(data_dir / name / "t10k-images-idx3-ubyte.gz", 3).astype(np.float64)
        y = read_idx(data_dir / name / "t10k-labels-idx1-ubyte.gz", 1).astype(int)
        pick = np.random.default_rng(0).choice(len(x), min(rows, len(x)), replace=False)
        x = x[pick].reshape(len(pick), 14, 2, 14, 2).mean(axis=(2, 4)).reshape(len(pick), -1)
        x, y = x[:, x.std(axis=0) > 0], y[pick]
        tasks += [held_out(x, y, c, 0.05, name, "images") for c in (0, 5)]
    return tasks


def _robustness_bases(data_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The six real tasks the discrete and heavy families add columns to: cardio, wbc, breast cancer at 5% and
    the three wine classes (pendigits left out: its 6,870 rows would double the families' time)."""
    bases = {name: (x, y) for _, name, x, y in odds_tasks(data_dir) if name != "pendigits"}
    bases.update({name: (x, y) for _, name, x, y in class_tasks() if name == "breast-cancer-0@0.05"
                  or name.startswith("wine-")})
    return bases


def standardized(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return ((train - mean) / std).astype(np.float32), ((test - mean) / std).astype(np.float32)


def vae(**kwargs) -> Detector:
    def fit_score(train: np.ndarray, test: np.ndarray, seed: int) -> np.ndarray:
        return -VAEAnomalyDetector(**{"random_state": seed, **kwargs}).fit(train).score_samples(test)
    return fit_score


def iforest(train: np.ndarray, test: np.ndarray, seed: int) -> np.ndarray:
    return -IsolationForest(random_state=seed).fit(train).score_samples(test)


def pyod(name: str) -> Detector | None:
    try:
        from pyod.models.auto_encoder import AutoEncoder
        from pyod.models.knn import KNN
    except ImportError:
        return None
    if name == "knn":
        return lambda train, test, seed: KNN().fit(train).decision_function(test)
    return lambda train, test, seed: AutoEncoder(random_state=seed, verbose=0, device="cpu").fit(
        train).decision_function(test)


def detectors(names: list[str], variants: dict[str, dict]) -> dict[str, Detector]:
    known = {"vaekit": vae(), "vaekit-old": vae(**OLD_DEFAULTS), "iforest": iforest, "knn": pyod("knn"),
             "ae": pyod("ae")}
    known.update({name: vae(**kw) for name, kw in variants.items()})
    chosen = {n: known[n] for n in names if known.get(n) is not None}
    missing = [n for n in names if known.get(n) is None]
    if missing:
        print(f"skipped (unknown, or PyOD not installed): {', '.join(missing)}")
    return chosen


def evaluate(task: Task, detector: Detector, seed: int) -> tuple[float, float]:
    """(ROC AUC on the test part, seconds to fit and score) of one seeded split."""
    _, _, x, y = task
    x_train, x_test, _, y_test = train_test_split(x, y, test_size=0.4, stratify=y, random_state=seed)
    x_train, x_test = standardized(x_train, x_test)
    t0 = time.perf_counter()
    scores = detector(x_train, x_test, seed)
    return float(roc_auc_score(y_test, scores)), time.perf_counter() - t0


def run(tasks: list[Task], chosen: dict[str, Detector], seeds: range, out: Path | None) -> dict:
    """Per detector and task: the mean ROC AUC over seeds and the mean seconds; each result printed and,
    with ``out``, appended to a JSON-lines file as it comes."""
    results: dict = defaultdict(dict)
    for family, name, x, y in tasks:
        for det, fn in chosen.items():
            runs = [evaluate((family, name, x, y), fn, s) for s in seeds]
            auc, sec = statistics.mean(r[0] for r in runs), statistics.mean(r[1] for r in runs)
            results[det][(family, name)] = (auc, sec)
            line = {"family": family, "task": name, "detector": det, "roc_auc": round(auc, 4),
                    "seconds": round(sec, 3), "seeds": [seeds.start, seeds.stop - 1], "rows": len(x),
                    "features": x.shape[1]}
            print(json.dumps(line), flush=True)
            if out is not None:
                with out.open("a") as f:
                    f.write(json.dumps(line) + "\n")
    return results


def table(results: dict) -> str:
    """Markdown: per family the mean ROC AUC (worst task in brackets), the means over tasks, over families and
    over the real-data tasks (families made of real outliers, not synthesized ones), and the fit time."""
    families = list(dict.fromkeys(f for per in results.values() for f, _ in per))
    means = " | mean of tasks | mean of families | real-data tasks | s per fit |"
    head = "| detector | " + " | ".join(families) + means
    rows = [head, "|" + "---|" * (len(families) + 5)]
    for det, per in results.items():
        by = {f: [a for (g, _), (a, _) in per.items() if g == f] for f in families}
        cells = [f"{statistics.mean(v):.3f} ({min(v):.2f})" if v else "" for v in by.values()]
        tasks = statistics.mean(a for a, _ in per.values())
        fams = statistics.mean(statistics.mean(v) for v in by.values() if v)
        real = [a for (g, _), (a, _) in per.items() if g not in SYNTHETIC]
        secs = statistics.mean(s for _, s in per.values())
        rows.append(f"| {det} | " + " | ".join(cells) + f" | {tasks:.3f} | {fams:.3f} | "
                    f"{statistics.mean(real) if real else math.nan:.3f} ({len(real)}) | {secs:.2f} |")
    return "\n".join(rows)


def saved(paths: list[Path]) -> dict:
    """Results as ``run`` returns them, read back from its JSON-lines files (a later line replaces an earlier
    one of the same detector and task)."""
    results: dict = defaultdict(dict)
    for path in paths:
        for line in path.read_text().splitlines():
            r = json.loads(line)
            results[r["detector"]][(r["family"], r["task"])] = (r["roc_auc"], r["seconds"])
    return results


def variant(arg: str) -> tuple[str, dict]:
    """``NAME={"key": value}`` -> (NAME, its arguments); the name may itself hold "=" (``combine=mean``)."""
    name, brace, rest = arg.partition("={")
    try:
        kwargs = json.loads(brace[1:] + rest) if brace else None
    except json.JSONDecodeError:
        kwargs = None
    if not name or not isinstance(kwargs, dict):
        raise SystemExit(f"--vae {arg!r}: expected NAME={{\"argument\": value, ...}}, a JSON object")
    return name, kwargs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--first-seed", type=int, default=5, help="development seeds are 0-4; report from 5 on")
    p.add_argument("--data-dir", type=Path, default=Path(os.environ.get("VAEKIT_DATA", "../shared/data")))
    p.add_argument("--detectors", default="vaekit,vaekit-old,iforest,knn,ae")
    p.add_argument("--vae", action="append", default=[], metavar="NAME=JSON",
                   help="a VAEAnomalyDetector variant, e.g. z8='{\"latent_dim\": 8}'")
    p.add_argument("--families", default="odds,local,global,dependency,clustered,classes,dense,discrete,heavy,images")
    p.add_argument("--out", type=Path, help="append each result to this JSON-lines file")
    p.add_argument("--summarize", nargs="+", type=Path, metavar="JSONL",
                   help="run nothing: print the table of results saved by --out")
    args = p.parse_args()
    if args.summarize:
        print(table(saved(args.summarize)))
        return
    import torch

    torch.set_num_threads(1)  # small tables: one thread is faster, and the timing is comparable
    variants = dict(variant(a) for a in args.vae)
    names = args.detectors.split(",") + [n for n in variants if n not in args.detectors.split(",")]
    keep = set(args.families.split(","))
    synthetic = synthetic_tasks(args.data_dir) if keep & set(SYNTHETIC) else []  # mixtures to fit: seconds
    tasks = odds_tasks(args.data_dir) + synthetic + class_tasks() + dense_tasks() + discrete_tasks(args.data_dir) \
        + heavy_tasks(args.data_dir) + (image_tasks(args.data_dir) if "images" in keep else [])
    tasks = [t for t in tasks if t[0] in keep]
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    print(f"{len(tasks)} tasks; seeds {seeds.start}..{seeds.stop - 1}")
    print(table(run(tasks, detectors(names, variants), seeds, args.out)))


if __name__ == "__main__":
    main()
