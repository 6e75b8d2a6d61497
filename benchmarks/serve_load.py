"""Load test of ``vaekit serve``: the server in its own process on loopback, concurrent clients, mixed endpoints.

    VAEKIT_DATA=../shared/data python benchmarks/serve_load.py RUN_DIR [--requests 2000] [--concurrency 32]
    python benchmarks/serve_load.py             # no run: trains a tiny digits model first (a few seconds)
    python benchmarks/serve_load.py --big-bodies 200 [--max-in-flight 0]

The clients (asyncio + httpx, one process) send a bounded number of requests, cycling through info, sample,
decode, encode, reconstruct and score with ``--batch`` inputs each (test examples from /v1/examples when the
server has them, else random inputs), and print throughput, p50/p99 latency per endpoint and overall, the
number of errors (anything but 200, or no answer), of 503 answers (more requests in flight than the server's
``--max-in-flight``; a client retries them) and of other 5xx answers.

``--big-bodies N`` measures memory instead: N clients at once each send /v1/encode a body of the server's
maximum size (8 MiB by default) of JSON numbers, the costliest kind to parse, and the benchmark prints the
server process's peak resident memory (VmHWM, Linux) and the answers by status (413 and 422 are expected for
such bodies, 503 beyond the server's cap on requests in flight; no other 5xx, and every request answered).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
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
    p.add_argument("--big-bodies", type=int, metavar="N",
                   help="instead: N concurrent maximum-size bodies; report the server's peak memory and answers")
    p.add_argument("--max-in-flight", type=int, metavar="N", help="vaekit serve --max-in-flight (0: no cap)")
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


def start_server(run: Path, port: int, log: Path, max_in_flight: int | None = None) -> subprocess.Popen:
    """``vaekit serve`` in its own process, so the clients do not share its interpreter; its output goes to ``log``
    (a file, not a pipe that nobody reads and that could fill up and stall the server)."""
    cmd = [sys.executable, "-m", "vaekit", "serve", str(run), "--host", "127.0.0.1", "--port", str(port)]
    cmd += [] if max_in_flight is None else ["--max-in-flight", str(max_in_flight)]
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
                "busy_503": sum(1 for _, s, _ in rows if s == 503),  # over the server's cap: retry later
                "status_5xx": sum(1 for _, s, _ in rows if s is not None and s >= 500 and s != 503)}

    out = {"all": {**stats(results), "throughput_rps": len(results) / wall, "wall_s": wall}}
    for name in ENDPOINTS:
        out[name] = stats([r for r in results if r[0] == name])
    return out


def print_table(figures: dict, args: argparse.Namespace) -> None:
    print(f"{args.requests} requests, {args.concurrency} concurrent clients, batch {args.batch} ({args.format}), "
          f"{os.cpu_count()} CPUs: {figures['all']['throughput_rps']:.1f} requests/s "
          f"over {figures['all']['wall_s']:.1f} s")
    print(f"{'endpoint':<12} {'requests':>8} {'p50 ms':>9} {'p99 ms':>9} {'errors':>7} {'503':>5} {'other 5xx':>9}")
    for name in ("all", *ENDPOINTS):
        f = figures[name]
        print(f"{name:<12} {f['requests']:>8} {f['p50_ms']:>9.1f} {f['p99_ms']:>9.1f} {f['errors']:>7} "
              f"{f['busy_503']:>5} {f['status_5xx']:>9}")


def memory_mib(pid: int) -> dict[str, float]:
    """The process's resident memory now (VmRSS) and at its peak so far (VmHWM), in MiB (Linux /proc)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {name: int(fields[name].split()[0]) / 1024 for name in ("VmRSS", "VmHWM")}


def big_body(size: int) -> bytes:
    """A JSON body of exactly ``size`` bytes: one input of as many numbers as fit ({"x": [[0.5, 0.5, ...]]}), the
    costliest body of that size to parse (each number becomes a Python float)."""
    head, tail = b'{"x": [[', b"]]}"
    n = (size - len(head) - len(tail) + 1) // 4  # "0.5," per number
    body = head + b",".join([b"0.5"] * n) + tail
    return body + b" " * (size - len(body))


async def run_big_bodies(base: str, body: bytes, n: int, timeout: float) -> collections.Counter:
    """The answers, by status (None: no answer), to ``n`` concurrent POSTs of ``body`` to /v1/encode."""
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout) as client:

        async def one() -> int | None:
            try:
                r = await client.post("/v1/encode", content=body, headers={"Content-Type": "application/json"})
                return r.status_code
            except httpx.HTTPError:
                return None

        return collections.Counter(await asyncio.gather(*(one() for _ in range(n))))


def big_bodies(args: argparse.Namespace, base: str, server: subprocess.Popen, info: dict) -> dict:
    body = big_body(info["limits"]["max_body_bytes"])
    idle = memory_mib(server.pid)
    t0 = time.perf_counter()
    answers = asyncio.run(run_big_bodies(base, body, args.big_bodies, max(args.timeout, 600)))
    wall = time.perf_counter() - t0
    peak = memory_mib(server.pid)["VmHWM"]
    other_5xx = sum(v for k, v in answers.items() if k is not None and k >= 500 and k != 503)
    figures = {"requests": args.big_bodies, "body_mib": len(body) / 2**20, "wall_s": wall,
               "max_in_flight": info["limits"].get("max_in_flight"), "idle_rss_mib": idle["VmRSS"],
               "peak_rss_mib": peak, "answers": {str(k): v for k, v in sorted(answers.items(), key=str)},
               "other_5xx": other_5xx, "no_answer": answers.get(None, 0)}
    print(f"{args.big_bodies} concurrent {figures['body_mib']:.1f} MiB bodies to /v1/encode, max_in_flight "
          f"{figures['max_in_flight']}, {os.cpu_count()} CPUs: server RSS {idle['VmRSS']:.0f} MiB idle, peak "
          f"{peak:.0f} MiB; answers {figures['answers']} in {wall:.1f} s; 5xx other than 503: {other_5xx}; "
          f"no answer: {figures['no_answer']}")
    return figures


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run if args.run is not None else tiny_run(Path(tmp) / "run")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = Path(tmp) / "server.log"
        server = start_server(run, port, log, args.max_in_flight)
        try:
            info = wait_until_up(base, server, log)
            if args.big_bodies:
                figures = big_bodies(args, base, server, info)
            else:
                bodies = request_bodies(base, info, args.batch, args.format)
                t0 = time.perf_counter()
                results = asyncio.run(run_load(base, bodies, args.requests, args.concurrency, args.timeout))
                figures = summarize(results, time.perf_counter() - t0)
        finally:
            server.terminate()
            server.wait(timeout=30)
        if log.read_text().strip():
            print(f"server output:\n{log.read_text()}", file=sys.stderr)
    if not args.big_bodies:
        print_table(figures, args)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, **figures}, indent=2))
    if args.big_bodies:
        return 0 if figures["other_5xx"] == figures["no_answer"] == 0 else 1
    return 0 if figures["all"]["status_5xx"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
