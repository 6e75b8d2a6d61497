"""``vaekit export``: a trained model's encoder and decoder as ONNX graphs or TorchScript modules."""

from __future__ import annotations

import argparse
from pathlib import Path

from vaekit import checkpoint, export


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="the encoder and decoder as ONNX graphs or TorchScript modules, for "
                       "deployment without vaekit")
    p.add_argument("dir", type=Path, help="checkpoint directory")
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
