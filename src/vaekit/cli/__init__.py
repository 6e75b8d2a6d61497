"""The ``vaekit`` command line: each command parses its flags, builds a config and calls the library."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

import torch

from vaekit import __version__, allocator, hub, progress
from vaekit.cli import analysis, curves, detect, exporting, images, serve, train
from vaekit.errors import VaekitError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vaekit", description="Variational autoencoders: train, evaluate, generate.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    p.add_argument("--version", action="version", version=f"vaekit {__version__} (torch {torch.__version__})")
    p.add_argument("--threads", type=_positive, metavar="N", help="CPU threads for PyTorch (default: its own "
                   "choice, usually one per core)")
    sub = p.add_subparsers(dest="command", required=True)
    train.add_train(sub)
    train.add_evaluate(sub)
    train.add_presets(sub)
    curves.add_plot(sub)
    images.add_commands(sub)
    analysis.add_embed(sub)
    analysis.add_anomaly(sub)
    detect.add_detect(sub)
    exporting.add_export(sub)
    exporting.add_card(sub)
    serve.add_serve(sub)
    return p


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 1")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vaekit`` console script; returns the exit status."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    previous = _on_sigterm(_terminate)
    try:
        if hub.is_hub_id(getattr(args, "dir", None)):  # downloaded once, then read as any directory
            args.dir = hub.snapshot(args.dir)
        if args.command == "serve":  # requests are answered, not reported on the server's terminal
            return args.func(args)
        allocator.keep_freed_memory()  # a computing command reuses its freed arrays (vaekit/allocator.py)
        with progress.report(args.command):  # the long loops over data sets say how far they are
            return args.func(args)
    except VaekitError as e:
        print(f"vaekit: error: {e}", file=sys.stderr)
        return 2
    except Terminated:
        print("vaekit: terminated (SIGTERM)", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("vaekit: interrupted", file=sys.stderr)
        return 130
    finally:
        _on_sigterm(previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler, `kill`, a container stopping), unwound like Ctrl-C: a command says where it
    stopped and what it kept, and no file is left half-written (every output is written atomically)."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def _on_sigterm(handler: object) -> object:
    """Install ``handler`` for SIGTERM where Python can (the main thread); the previous handler."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)
