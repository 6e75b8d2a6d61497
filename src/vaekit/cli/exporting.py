"""Sharing a model: ``vaekit export`` (the encoder and decoder as ONNX graphs or TorchScript modules) and
``vaekit card`` (a model card, README.md, so that the run directory can go to the Hugging Face Hub as it is)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vaekit import card, checkpoint, evaluation, export, hub
from vaekit.cli.common import MODEL_HELP, model_source


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="the encoder and decoder as ONNX graphs or TorchScript modules, for "
                       "deployment without vaekit")
    p.add_argument("dir", type=model_source, help=MODEL_HELP)
    p.add_argument("--format", default="onnx", choices=list(export.FORMATS),
                   help="onnx (run with onnxruntime; needs the onnx package: pip install 'vaekit[onnx]') or "
                        "torchscript (torch.jit.load)")
    p.add_argument("-o", "--output", type=Path, required=True, help="folder for encoder, decoder and export.json")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    model = checkpoint.load(args.dir)
    for path in export.export(model, args.output, args.format):
        print(f"wrote {path}")
    spec = export.signature(model)
    for name in ("encoder", "decoder"):
        ins = ", ".join(f"{i['name']} {tuple(i['shape'])}" for i in spec[name]["inputs"])
        outs = ", ".join(f"{o['name']} {tuple(o['shape'])}" for o in spec[name]["outputs"])
        print(f"{name}: {ins} -> {outs}")
    return 0


def add_card(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("card", help="write a model card (README.md: model, training, evaluation, pictures, use) "
                       "into the run directory, ready to upload to the Hugging Face Hub")
    p.add_argument("dir", type=Path, help="run or checkpoint directory (the card is written into it)")
    p.add_argument("--repo-id", metavar="OWNER/NAME", help="the Hub repository the run will go to, for the card's "
                   "usage lines (default: a placeholder)")
    p.add_argument("--no-evaluate", action="store_true", help="leave the evaluation out (it needs the data)")
    p.add_argument("--iw-samples", type=int, default=1000, help="importance samples K of the card's NLL (0 skips it)")
    p.add_argument("--limit", type=int, metavar="N", help="evaluate on the first N test examples only")
    p.add_argument("--data-dir", help="where the run's dataset is (default: as in training, or $VAEKIT_DATA)")
    p.set_defaults(func=cmd_card)


def cmd_card(args: argparse.Namespace) -> int:
    hub.refuse_write(args.dir, card.CARD_FILE)  # before minutes of evaluation, not after
    result = None
    if not args.no_evaluate:
        overrides = {"data_dir": args.data_dir} if args.data_dir else None
        result = evaluation.evaluate(args.dir, "test", args.iw_samples, "auto", overrides, limit=args.limit)
    print(f"wrote {card.write_card(args.dir, result, args.repo_id)}")
    print(f"upload the run as it is: hf upload {args.repo_id or 'OWNER/NAME'} {args.dir} . "
          "--exclude 'checkpoints/*/training_state.*'")
    return 0
