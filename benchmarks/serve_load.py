"""Load test of ``vaekit serve``: the server in its own process on loopback, concurrent clients, mixed endpoints.

    VAEKIT_DATA=../shared/data python benchmarks/serve_load.py RUN_DIR [--requests 2000] [--concurrency 32]
    python benchmarks/serve_load.py             # no run: trains a tiny digits model first (a few seconds)

The clients (asyncio + httpx, one process) send a bounded number of requests, cycling through info, sample,
decode, encode, reconstruct and score with ``--batch`` inputs each (test examples from /v1/examples when the
server has them, else random inputs), and print throughput, p50/p99 latency per endpoint and overall, the
number of errors (anything but 200, or no answer) and of 5xx answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ENDPOINTS = ("info", "sample", "decode", "encode", "reconstruct", "score")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", nargs="?", type=Path, help="checkpoint directory (default: train a tiny digits model)")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--batch", type=int, default=16, help="inputs, codes or samples per request")
    p.add_argument("--format", default="array", choices=["array", "png"],
                   help="how images travel, both ways (png: image models only)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds before a request counts as failed")
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p.parse_args()


def tiny_run(directory: Path) -> Path:
    import vaekit

    config = vaekit.Config().override({"data.dataset": "digits", "train.epochs": 3, "model.hidden": [64],
                                       "model.latent_dim": 4, "train.device": "cpu"})
    vaekit.train(config, directory)
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: Path, port: int, log: Path) -> subprocess.Popen:
    """``vaekit serve`` in its own process, so the clients do not share its interpreter; its output goes to ``log``
    (a file, not a pipe that nobody reads and that could fill up and stall the server)."""
    cmd = [sys.executable, "-m", "vaekit", "serve", str(run), "--host", "127.0.0.1", "--port", str(port)]
    print("server:", " ".join(cmd), file=sys.stderr)
    with open(log, "w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)


def wait_until_up(base: str, server: subprocess.Popen, log: Path, limit_s: float = 120) -> dict:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode}:\n{log.read_text()}")
        try:
            return httpx.get(f"{base}/v1/info", timeout=2).json()
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"the server did not answer within {limit_s:.0f} s")


def request_bodies(base: str, info: dict, batch: int, fmt: str) -> dict[str, dict | None]:
    """One JSON body per endpoint (None: a GET); images in and out as ``fmt``."""
    rng = np.random.default_rng(0)
    shape, latent = info["data_shape"], info["latent_dim"]
    if info.get("examples", 0) >= batch:
        x = httpx.get(f"{base}/v1/examples", params={"n": batch, "format": fmt}, timeout=30).json()["x"]
    elif fmt == "array":
        x = rng.random((batch, *shape)).round(3).tolist()
    else:
        raise SystemExit("--format png needs test examples on the server (an image run with its dataset)")
    extra = {"label": info["labels"][0]} if info["conditional"] else {}
    z = rng.standard_normal((batch, latent)).round(4).tolist()
    out = {**extra, "format": fmt}
    return {"info": None, "sample": {"n": batch, **out}, "decode": {"z": z, **out},
            "encode": {"x": x, **extra}, "reconstruct": {"x": x, **out}, "score": {"x": x, **extra}}


async def run_load(base: str, bodies: dict, total: int, concurrency: int, timeout: float) -> list[tuple]:
    """(endpoint, status or None, seconds) for each of ``total`` requests, ``concurrency`` in flight."""
    results: list[tuple] = []
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout) as client:

        async def worker() -> None:
            for i in counter:
                name = ENDPOINTS[i % len(ENDPOINTS)]
                t0 = time.perf_counter()
                try:
                    if bodies[name] is None:
                        r = await client.get(f"/v1/{name}")
                    else:
                        r = await client.post(f"/v1/{name}", json=bodies[name])
                    status = r.status_code
                except httpx.HTTPError:
                    status = None
                results.append((name, status, time.perf_counter() - t0))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def summarize(results: list[tuple], wall: float) -> dict:
    def stats(rows: list[tuple]) -> dict:
        ms = sorted(1000 * t for _, _, t in rows)
        p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
        return {"requests": len(rows), "p50_ms": statistics.median(ms), "p99_ms": p99,
                "errors": sum(1 for _, s, _ in rows if s != 200),
                "status_5xx": sum(1 for _, s, _ in rows if s is not None and s >= 500)}

    out = {"all": {**stats(results), "throughput_rps": len(results) / wall, "wall_s": wall}}
    for name in ENDPOINTS:
        out[name] = stats([r for r in results if r[0] == name])
    return out


def print_table(figures: dict, args: argparse.Namespace) -> None:
    print(f"{args.requests} requests, {args.concurrency} concurrent clients, batch {args.batch} ({args.format}), "
          f"{os.cpu_count()} CPUs: {figures['all']['throughput_rps']:.1f} requests/s "
          f"over {figures['all']['wall_s']:.1f} s")
    print(f"{'endpoint':<12} {'requests':>8} {'p50 ms':>9} {'p99 ms':>9} {'errors':>7} {'5xx':>5}")
    for name in ("all", *ENDPOINTS):
        f = figures[name]
        print(f"{name:<12} {f['requests']:>8} {f['p50_ms']:>9.1f} {f['p99_ms']:>9.1f} {f['errors']:>7} "
              f"{f['status_5xx']:>5}")


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run if args.run is not None else tiny_run(Path(tmp) / "run")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = Path(tmp) / "server.log"
        server = start_server(run, port, log)
        try:
            info = wait_until_up(base, server, log)
            bodies = request_bodies(base, info, args.batch, args.format)
            t0 = time.perf_counter()
            results = asyncio.run(run_load(base, bodies, args.requests, args.concurrency, args.timeout))
            figures = summarize(results, time.perf_counter() - t0)
        finally:
            server.terminate()
            server.wait(timeout=30)
        if log.read_text().strip():
            print(f"server output:\n{log.read_text()}", file=sys.stderr)
    print_table(figures, args)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, **figures}, indent=2))
    return 0 if figures["all"]["status_5xx"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
