"""``vaekit serve``: the HTTP API and the web page for a trained model (needs ``pip install 'vaekit[serve]'``)."""

from __future__ import annotations

import argparse
import sys

from vaekit.cli.common import MODEL_HELP, model_source
from vaekit.errors import VaekitError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="an HTTP API and a web page to explore a trained model's latent space")
    p.add_argument("dir", type=model_source, help=MODEL_HELP)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: loopback only; 0.0.0.0 exposes the server to the network)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--examples", type=int, default=500,
                   help="test inputs of the run's dataset the page can show and map (0: none)")
    p.add_argument("--data-dir", help="where the run's dataset lives, for the examples (default: $VAEKIT_DATA)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--max-body-mb", type=float, default=8.0, help="largest request body accepted, in MiB")
    p.add_argument("--max-in-flight", type=int, metavar="N",
                   help="requests served at once; more are answered 503 with Retry-After (default: as many "
                        "maximum-size bodies as fit 1 GiB at their peak cost, 8 for 8 MiB; 0: no cap)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise VaekitError(f"--port must lie in 0..65535, got {args.port}")
    if args.examples < 0 or args.max_body_mb <= 0 or (args.max_in_flight is not None and args.max_in_flight < 0):
        raise VaekitError("--examples and --max-in-flight must be >= 0 and --max-body-mb positive")
    try:  # here, not at the top: the rest of vaekit works without the web framework
        import uvicorn

        from vaekit.serve.app import create_app
    except ImportError as e:
        raise VaekitError(f"vaekit serve needs FastAPI and uvicorn, and {e.name} is not installed: "
                          "pip install 'vaekit[serve]'") from None
    app = create_app(args.dir, n_examples=args.examples, data_dir=args.data_dir, device=args.device,
                     max_body_bytes=int(args.max_body_mb * 2**20), max_in_flight=args.max_in_flight)
    host = f"[{args.host}]" if ":" in args.host else args.host
    if args.host not in LOOPBACK:
        print(f"vaekit: warning: listening on {args.host}, reachable from other machines", file=sys.stderr)
    print(f"serving {args.dir} at http://{host}:{args.port}/ (API docs at /docs); Ctrl-C stops", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning")
    return 0
