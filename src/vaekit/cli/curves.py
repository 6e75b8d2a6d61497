"""``vaekit plot``: a run's training curves from its ``metrics.jsonl``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vaekit import plots
from vaekit.errors import DataError


def add_plot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="training curves of a run: -ELBO, reconstruction, KL, beta, KL per dimension")
    p.add_argument("dir", type=Path, help="run directory (reads its metrics.jsonl)")
    p.add_argument("-o", "--output", type=Path, help="PNG file (default: DIR/curves.png)")
    p.set_defaults(func=cmd_plot)


def cmd_plot(args: argparse.Namespace) -> int:
    history = read_metrics(args.dir / "metrics.jsonl")
    out = plots.training_curves(history, args.output or args.dir / "curves.png",
                                f"{args.dir.name}: {len(history)} epoch{'s' if len(history) != 1 else ''}")
    print(f"wrote {out}")
    return 0


def read_metrics(path: Path) -> list[dict]:
    """The epoch records of a run, in order; a DataError naming the file and line when one is unreadable."""
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except ValueError:
            raise DataError(f"{path}, line {number}: not a JSON record") from None
        if not isinstance(record, dict) or "epoch" not in record:
            raise DataError(f"{path}, line {number}: not an epoch record")
        records.append(record)
    if not records:
        raise DataError(f"{path} holds no epoch yet: the run has not finished its first epoch")
    return records
