"""``vaekit plot``: a run's training curves from its ``metrics.jsonl``."""

from __future__ import annotations

import argparse
from pathlib import Path

from vaekit import hub, plots
from vaekit.cli.common import model_source
from vaekit.training.records import read_metrics


def add_plot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="training curves of a run: -ELBO, reconstruction, KL, beta, KL per dimension")
    p.add_argument("dir", type=model_source, help="run directory (reads its metrics.jsonl), or a Hub id hf://owner/name")
    p.add_argument("-o", "--output", type=Path, help="PNG file (default: DIR/curves.png)")
    p.set_defaults(func=cmd_plot)


def cmd_plot(args: argparse.Namespace) -> int:
    history = read_metrics(args.dir / "metrics.jsonl")
    default = Path("curves.png") if hub.in_cache(args.dir) else args.dir / "curves.png"  # never into a download
    out = plots.training_curves(history, args.output or default,
                                f"{args.dir.name}: {len(history)} epoch{'s' if len(history) != 1 else ''}")
    print(f"wrote {out}")
    return 0
