"""Data at scale: what the data costs in memory and start-up time, measured.

Parts (``--part``, several allowed):

* ``mnist``: the bytes MNIST's training split holds on the training device, as stored (uint8) against the
  float32 it used to be, and the peak resident memory of a one-epoch ``seed`` run in a fresh process.
* ``folder``: a folder of --images procedurally drawn 64x64 RGB PNG files, and one of a fifth as many 512x512
  JPEG files read at 64x64 (made in a temporary folder, deleted after): a decode in one process, the first read
  (decoding, in worker processes where the pace of the first files says it pays) and the second read (from
  the cache), each in a fresh process.

* ``array``: a procedurally drawn (N, 3, 64, 64) uint8 .npy array of --array images (about 12 GB for a
  million), written in blocks and deleted after: one epoch of the conv preset read from disk (a memory budget
  of --budget GB) against a --subset of the same kind held in memory, examples per second and peak resident
  memory of each, in fresh processes.

    VAEKIT_DATA=../shared/data python benchmarks/scale.py --part mnist --part folder --images 20000
    python benchmarks/scale.py --part array --array 1000000 --subset 100000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def child(code: str, env: dict | None = None) -> dict:
    """Run ``code`` in a fresh Python (src on the path); it prints one JSON object, returned with the child's
    peak resident memory in MB."""
    wrapper = (f"import json, resource, sys\n{code}\n"
               "out['peak_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
               "print(json.dumps(out))\n")
    run_env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    proc = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, env=run_env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"child failed:\n{proc.stderr[-3000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "stderr": proc.stderr}


def part_mnist(args: argparse.Namespace) -> None:
    held = child("from vaekit import data\nfrom vaekit.config import DataConfig\n"
                 f"s = data.load(DataConfig(dataset='mnist', data_dir={args.data_dir!r}, val_size=0))\n"
                 "out = {'stored_mb': s.train.stored.nbytes / 2**20, 'float32_mb': s.train.x.nbytes / 2**20,"
                 " 'dtype': str(s.train.stored.dtype)}")
    train = child("import time, vaekit\nt0 = time.perf_counter()\n"
                  "c = vaekit.Config().override({**vaekit.config.PRESETS['seed'], 'data.dataset': 'mnist', "
                  f"'data.data_dir': {args.data_dir!r}, 'train.epochs': 1, 'train.device': 'cpu', "
                  "'train.checkpoint_every': 0})\nvaekit.train(c)\nout = {'seconds': time.perf_counter() - t0}")
    print(f"| MNIST training split on the device | {held['stored_mb']:.1f} MB ({held['dtype']}) | "
          f"{held['float32_mb']:.1f} MB as float32 | {held['float32_mb'] / held['stored_mb']:.1f}x less |")
    print(f"| one-epoch `seed` run, peak resident memory | {train['peak_mb']:.0f} MB | {train['seconds']:.1f} s | |")


def draw_folder(folder: Path, n: int, px: int, fmt: str) -> None:
    """``n`` px x px RGB files: smooth random colour fields (compressible, as photos are), in 10 class folders."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:px, 0:px] / px
    for i in range(n):
        k = rng.normal(size=(3, 4))
        img = np.stack([np.sin(k[c, 0] * 6 * xx + k[c, 1] * 6 * yy + k[c, 2]) * 0.5 + 0.5 for c in range(3)], -1)
        where = folder / f"class{i % 10}"
        where.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 255).astype(np.uint8)).save(where / f"{i:06d}.{fmt}")


def time_folder(n: int, px: int, fmt: str) -> None:
    """First read (decode, in workers where it pays), a decode in one process, and the second read (cache) of
    a folder of ``n`` files, read at 64x64, each in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pics"
        t0 = time.perf_counter()
        draw_folder(folder, n, px, fmt)
        print(f"(drew {n} {fmt} files in {time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        read = ("import logging, time\nfrom vaekit.data import folders, images\n{setup}\n"
                "logging.basicConfig(level=logging.INFO)\nt0 = time.perf_counter()\n"
                f"s = images.read({str(folder)!r}, image_size=(64, 64))\n"
                "out = {{'seconds': time.perf_counter() - t0, 'n': len(s.x), 'dtype': str(s.x.dtype)}}")
        one = child(read.format(setup="folders.PARALLEL_AFTER_S = float('inf')"), {"VAEKIT_CACHE": f"{tmp}/c1"})
        first = child(read.format(setup=""), {"VAEKIT_CACHE": f"{tmp}/c2"})
        second = child(read.format(setup=""), {"VAEKIT_CACHE": f"{tmp}/c2"})
    what = f"{n} {fmt.upper()} files, {px}x{px} RGB, read at 64x64"
    how = " by worker processes" if "worker processes" in first["stderr"] else " in one process: not worth workers"
    print(f"| {what}: decoded in one process | {one['seconds']:.1f} s | {one['peak_mb']:.0f} MB |")
    print(f"| {what}: first run (decoded{how}, then cached) | {first['seconds']:.1f} s | "
          f"{first['peak_mb']:.0f} MB |")
    print(f"| {what}: second run, from the cache | {second['seconds']:.2f} s | {second['peak_mb']:.0f} MB |")


def part_folder(args: argparse.Namespace) -> None:
    print("| folder | start-up | peak resident memory (the main process) |")
    print("|---|---|---|")
    time_folder(args.images, 64, "png")
    time_folder(args.images // 5, 512, "jpg")


def make_array(path: Path, n: int, block: int = 8192) -> None:
    """(n, 3, 64, 64) uint8 images written block by block (never all in memory): blocky colour fields from an
    8x8 random image each, so that a VAE has something to learn."""
    rng = np.random.default_rng(0)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 3, 64, 64))
    for s in range(0, n, block):
        small = rng.integers(0, 256, (min(block, n - s), 3, 8, 8), dtype=np.uint8)
        out[s : s + len(small)] = small.repeat(8, axis=2).repeat(8, axis=3)
    out.flush()
    del out


# Peak memory is the child's ru_maxrss, which Linux carries over from the process it was forked from (as resident
# at the fork): so this process never maps the arrays it writes, its children do.


def train_epoch(path: Path, budget_gb: float) -> dict:
    """One epoch of the conv preset on the array at ``path`` in a fresh process: examples per second of the
    epoch, its peak resident memory, and whether it streamed."""
    code = ("import logging, time, vaekit\nfrom vaekit.config import PRESETS\n"
            "logging.basicConfig(level=logging.INFO)\n"
            f"c = vaekit.Config().override({{**PRESETS['conv'], 'data.dataset': {str(path)!r}, "
            f"'data.max_memory_gb': {budget_gb}, 'data.val_size': 0, 'data.test_size': 1000, 'train.epochs': 1, "
            "'train.device': 'cpu', 'train.checkpoint_every': 0})\n"
            "r = vaekit.train(c)\nh = r.history[-1]\n"
            "out = {'epoch_s': h['time_s'], 'loss': h['train_neg_elbo']}")
    got = child(code)
    got["streamed"] = "training reads" in got["stderr"]
    return got


def part_array(args: argparse.Namespace) -> None:
    """A large array streamed from disk against a subset held in memory."""
    root = Path(args.scratch or tempfile.mkdtemp(prefix="vaekit-scale-"))
    big, small = root / "big.npy", root / "small.npy"
    try:
        t0 = time.perf_counter()
        for path, n in ((big, args.array), (small, args.subset)):  # written by a child: see below
            child(f"import sys\nsys.path.insert(0, {str(ROOT / 'benchmarks')!r})\nimport scale\n"
                  f"scale.make_array(scale.Path({str(path)!r}), {n})\nout = {{}}")
        print(f"(wrote {big.stat().st_size / 2**30:.1f} GB in {time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        held = train_epoch(small, 0.0)
        streamed = train_epoch(big, args.budget)
    finally:
        for f in (big, small):
            f.unlink(missing_ok=True)
    rate_held, rate_streamed = (args.subset - 1000) / held["epoch_s"], (args.array - 1000) / streamed["epoch_s"]
    print("| one conv-preset epoch, 64x64x3 uint8 | examples | epoch | examples/s | peak resident memory |")
    print("|---|---|---|---|---|")
    print(f"| in memory ({'streamed!' if held['streamed'] else 'held'}) | {args.subset - 1000:,} | "
          f"{held['epoch_s']:.0f} s | {rate_held:.0f} | {held['peak_mb']:.0f} MB |")
    print(f"| from disk, budget {args.budget} GB ({'streamed' if streamed['streamed'] else 'held!'}) | "
          f"{args.array - 1000:,} | {streamed['epoch_s']:.0f} s | {rate_streamed:.0f} "
          f"({rate_streamed / rate_held:.2f}x) | {streamed['peak_mb']:.0f} MB |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", action="append", choices=["mnist", "folder", "array"], required=True)
    p.add_argument("--array", type=int, default=1_000_000, help="array: images in the array read from disk")
    p.add_argument("--subset", type=int, default=100_000, help="array: images of the array held in memory")
    p.add_argument("--budget", type=float, default=1.0, help="array: data.max_memory_gb of the streamed run")
    p.add_argument("--scratch", help="array: folder for the arrays (default: a temporary one)")
    p.add_argument("--images", type=int, default=20_000, help="folder: how many PNG files")
    p.add_argument("--data-dir", default=os.environ.get("VAEKIT_DATA", "../shared/data"))
    args = p.parse_args()
    print(f"CPU: {cpu()}, {os.cpu_count()} cores; Python {platform.python_version()}")
    for part in args.part:
        {"mnist": part_mnist, "folder": part_folder, "array": part_array}[part](args)


if __name__ == "__main__":
    main()
