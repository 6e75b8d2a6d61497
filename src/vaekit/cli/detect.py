"""``vaekit detect``: fit ``VAEAnomalyDetector`` on a table and write every row's anomaly score and flag.

The one-step path for tables, with the detector's data-adapted defaults (``vaekit.detector``); the
``anomaly`` command scores with a model trained by ``vaekit train`` instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from vaekit.data import tabular
from vaekit.errors import ConfigError, DataError


def add_detect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("detect", help="fit the tabular anomaly detector on a table; scores and flags per row")
    p.add_argument("table", type=Path, help="the rows to fit on (.csv, .parquet, .mat, .npy or .npz)")
    p.add_argument("--score-table", type=Path, help="score these rows instead of the fitted ones (same columns)")
    p.add_argument("--label-column", help="CSV or Parquet: a column of 0/1 outlier labels (in each table read), "
                   "left out of the features and used for the ROC AUC only")
    p.add_argument("--contamination", default="0.1", help="the fraction of rows flagged, or 'auto' (Tukey's "
                   "upper fence of the fitted rows' scores)")
    p.add_argument("--seed", type=int, help="seeds the fit (default: fresh randomness)")
    p.add_argument("--steps", type=int, help="optimizer steps per model (default: ten passes over the rows, "
                   "1,000 to 20,000)")
    p.add_argument("-o", "--output", type=Path, default=Path("scores.csv"), help="CSV: index, score, flag")
    p.set_defaults(func=cmd_detect)


def cmd_detect(args: argparse.Namespace) -> int:
    from vaekit import anomaly
    from vaekit.cli.common import write_scores
    from vaekit.detector import VAEAnomalyDetector

    fitted = tabular.read(args.table, args.label_column)
    scored = fitted if args.score_table is None else tabular.read(args.score_table, args.label_column)
    if scored.x.shape[1] != fitted.x.shape[1]:
        raise DataError(f"{args.score_table} has {scored.x.shape[1]} feature columns; {args.table} has "
                        f"{fitted.x.shape[1]}")
    detector = VAEAnomalyDetector(contamination=_contamination(args.contamination), random_state=args.seed,
                                  steps=args.steps)
    detector.check_params()  # an argument out of range is refused before "fitting ..." is printed
    print(f"fitting VAEAnomalyDetector on {len(fitted.x)} rows of {fitted.x.shape[1]} features of {args.table}",
          flush=True)
    try:
        detector.fit(fitted.x)
    except ConfigError:  # an argument out of range, named by the detector
        raise
    except ValueError as e:  # scikit-learn's validation: NaN, infinity, too few rows
        raise DataError(f"{args.table}: {e}") from None
    scores = -detector.score_samples(scored.x)
    flags = scores > detector.threshold_
    write_scores(args.output, scores, flags)
    print(f"wrote {args.output}: {len(scores)} rows, {int(flags.sum())} flagged "
          f"(threshold {detector.threshold_:.4g})")
    if scored.y is not None and len(np.unique(scored.y)) == 2:
        auc = anomaly.auc_scores(scored.y, scores)
        print(f"ROC AUC {auc['roc_auc']:.4f}, PR AUC {auc['pr_auc']:.4f} against the table's labels")
    return 0


def _contamination(text: str) -> float | str:
    """'auto' or a number; its range is the detector's to check."""
    try:
        return text if text == "auto" else float(text)
    except ValueError:
        raise ConfigError(f"--contamination {text!r}: expected 'auto' or a fraction in (0, 0.5]") from None
