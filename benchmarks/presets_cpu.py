"""Milliseconds per CPU training step of the presets that train through autograd, and seconds per
importance-sampled evaluation, optionally against another checkout of the library.

Each training row builds the preset's model (``vaekit.VAE`` for MNIST-sized images) and times
``vaekit.training.steps.train_step`` on random batches in [0, 1] of the preset's batch size, in blocks of
``--steps`` steps after one block of warm-up, and reports the median block. ``NAME:iwae`` trains on the IWAE
bound with the preset's ``train.iw_k`` samples instead of the ELBO. Every row takes the autograd path, also
``iwae`` with the ELBO, which a real CPU run gives to the fused step (vaekit.training.fused). Each evaluation
row (``PRESET:K``) times ``vaekit.evaluate_model(model, x, iw_samples=K)`` (negative ELBO, the NLL with K
importance samples, active units) on ``--eval-n`` random binary images, and ``PRESET:SCORE:K`` the anomaly score
SCORE (``vaekit.anomaly.score``) with K draws or importance samples. Where ``benchmarks/floor.py`` is
present, each row also gives the share of its time that its matrix products and convolutions alone take
(replayed at their shapes in float32): what is left is not the math.

With ``--baseline SRC`` (the ``src`` folder of another checkout, e.g. HEAD cloned into /tmp/base) the
measurements run in child processes, this tree's and the baseline's in turn for ``--rounds`` rounds, so that a
change in the machine's speed (its cores are shared) affects both alike; the table gives both medians and
their ratio.

With ``--baseline allocator`` the baseline is this tree too, with the C allocator's default settings, and this
tree's children keep freed memory (``vaekit.allocator.keep_freed_memory``, as the ``vaekit`` command line does).

    python benchmarks/presets_cpu.py --threads 1
    python benchmarks/presets_cpu.py --threads 2 --baseline allocator --rounds 2
    git clone -q . /tmp/base && python benchmarks/presets_cpu.py --threads 1 --baseline /tmp/base/src --rounds 2
    python benchmarks/presets_cpu.py --presets --evals conv:kl:10 hvae:elbo:10 hvae:kl:10 --eval-n 300
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
TREE_SRC = HERE.parent / "src"
PRESETS = ("conv", "hvae", "hvae-conv", "iwae", "iwae:iwae", "vamp", "iaf")
EVALS = ("seed:1000", "iwae:50")

try:  # the product floor, where this checkout has it
    sys.path.insert(0, str(HERE))
    import floor
except ImportError:  # pragma: no cover - a checkout without benchmarks/floor.py
    floor = None


def machine() -> str:
    """The CPU in words: its name, vector extensions that matter here, PyTorch's kernel level and threads.

    Read from torch, not vaekit.devices: a child measuring a --baseline checkout imports that checkout's vaekit,
    which may predate it."""
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    name = platform.processor() or caps.get("cpu_name") or platform.machine()
    shown = [f for f in ("avx2", "avx512_f", "avx512_bf16", "amx_bf16") if caps.get(f)]
    return (f"{name} ({', '.join(shown) or 'no AVX2'}; kernels {torch.backends.cpu.get_cpu_capability()}), "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}")


def training_step(spec: str) -> tuple[Callable[[], Any], int]:
    """One training step of ``spec`` (``PRESET`` or ``PRESET:iwae``) as a function, and its batch size."""
    import vaekit
    from vaekit import objectives
    from vaekit.training import steps

    name, _, objective = spec.partition(":")
    config = vaekit.preset(name).override({"model.data_shape": [1, 28, 28]})
    tc = config.train
    model = vaekit.VAE(config.model)
    generator = torch.Generator().manual_seed(0)
    model.init_from_data(torch.rand(1000, 1, 28, 28, generator=generator), generator)
    opt = steps.make_optimizer(model, tc.lr)
    options = steps.StepOptions(objectives.Objective(objective or "elbo", tc.iw_k, tc.free_bits_floor))
    batches = [torch.rand(tc.batch_size, 1, 28, 28, generator=generator) for _ in range(4)]
    state = {"i": 0}

    def step() -> Any:
        state["i"] += 1
        return steps.train_step(model, opt, batches[state["i"] % len(batches)], 1.0, options=options)

    return step, tc.batch_size


def evaluation(spec: str, n: int) -> tuple[Callable[[], Any], int]:
    """On n random binary images, as a function, and K: ``vaekit.evaluate_model`` with K importance samples
    (``spec`` = ``PRESET:K``), or the anomaly score SCORE with K draws or samples (``PRESET:SCORE:K``)."""
    import vaekit
    from vaekit import anomaly

    name, *score, k = spec.split(":")
    config = vaekit.preset(name).override({"model.data_shape": [1, 28, 28]})
    model = vaekit.VAE(config.model)
    generator = torch.Generator().manual_seed(0)
    model.init_from_data(torch.rand(1000, 1, 28, 28, generator=generator), generator)
    x = (torch.rand(n, 1, 28, 28, generator=generator) < 0.13).float()  # about MNIST's share of ink
    if score:
        return lambda: anomaly.score(model, x, score[0], int(k)), int(k)
    return lambda: vaekit.evaluate_model(model, x, iw_samples=int(k)), int(k)


def blocks(fn: Callable[[], Any], n_blocks: int, calls: int) -> list[float]:
    """Seconds per call of ``fn`` in each of ``n_blocks`` blocks of ``calls`` calls, after one block of warm-up."""
    times = []
    for block in range(n_blocks + 1):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        if block:
            times.append((time.perf_counter() - start) / calls)
    return times


def floor_of(fn: Callable[[], Any], passes: int, repeats: int = 3) -> float | None:
    """Seconds the matrix products and convolutions of one call of ``fn`` take alone (benchmarks/floor.py)."""
    if floor is None:
        return None
    products = floor.capture(fn)
    return floor.floor_seconds(products, torch.float32, repeats=repeats, passes=passes)


def evaluation_floor(spec: str, n: int) -> float | None:
    """The product floor of an evaluation of n images, measured on at most 100 of them and scaled to n: its
    products grow with the images, and replaying them all would take as long as the evaluation, twice over."""
    few = min(n, 100)
    seconds = floor_of(evaluation(spec, few)[0], passes=1, repeats=1)
    return None if seconds is None else seconds * n / few


def measure(args: argparse.Namespace, with_floor: bool) -> dict[str, Any]:
    """This process's library, timed: per row its seconds per call in each block, and its product floor."""
    rows: dict[str, Any] = {}
    for spec in args.presets:
        step, batch = training_step(spec)
        rows[spec] = {"kind": "train", "batch": batch, "s": blocks(step, args.blocks, args.steps)}
        if with_floor:
            rows[spec]["floor_s"] = floor_of(step, max(1, args.steps // 2))
    for spec in args.evals:
        run, k = evaluation(spec, args.eval_n)
        rows[f"eval {spec}"] = {"kind": "eval", "k": k, "n": args.eval_n, "s": blocks(run, args.eval_blocks, 1)}
        if with_floor:
            rows[f"eval {spec}"]["floor_s"] = evaluation_floor(spec, args.eval_n)
    return {"machine": machine(), "rows": rows}


def child_argv(args: argparse.Namespace, out: str, with_floor: bool, keep_freed: bool) -> list[str]:
    """The command line that measures one library in a child process and writes its results to ``out``."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", out, "--presets", *args.presets,
            "--evals", *args.evals, "--steps", str(args.steps), "--blocks", str(args.blocks),
            "--eval-n", str(args.eval_n), "--eval-blocks", str(args.eval_blocks)]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    return argv + ([] if with_floor else ["--no-floor"]) + (["--keep-freed-memory"] if keep_freed else [])


def against(args: argparse.Namespace) -> dict[str, Any]:
    """This tree and the baseline measured in turn, ``args.rounds`` times; every block of every round kept."""
    allocator = args.baseline == "allocator"  # the same library, with and without the allocator's settings
    libraries = {"tree": str(TREE_SRC), "baseline": str(TREE_SRC) if allocator else args.baseline}
    merged: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for rnd in range(args.rounds):
            order = list(libraries) if rnd % 2 == 0 else list(reversed(libraries))
            for which in order:
                out = str(Path(scratch) / f"{which}{rnd}.json")
                env = {**os.environ, "PYTHONPATH": libraries[which]}
                keep = args.keep_freed_memory or (allocator and which == "tree")
                subprocess.run(child_argv(args, out, rnd == 0 and not args.no_floor, keep), env=env, check=True)
                doc = json.loads(Path(out).read_text())
                merged.setdefault("machine", doc["machine"])
                for spec, row in doc["rows"].items():
                    mine = merged.setdefault(which, {}).setdefault(spec, {**row, "s": []})
                    mine["s"] += row["s"]
    return merged


def cells(row: dict[str, Any]) -> tuple[str, str, str]:
    """ms per step (or s per evaluation), examples (or importance samples) per second, and the floor's share."""
    t = statistics.median(row["s"])
    share = f"{row['floor_s'] / t:.0%}" if row.get("floor_s") else "-"
    if row["kind"] == "train":
        return f"{t * 1e3:.2f} ms", f"{row['batch'] / t:,.0f}", share
    return (f"{t:.2f} s" if t >= 1 else f"{t * 1e3:.0f} ms"), f"{row['n'] * row['k'] / t:,.0f}", share


def table(doc: dict[str, Any], args: argparse.Namespace) -> None:
    """The Markdown table: each row's time, throughput and floor share, against the baseline where given."""
    print(f"CPU: {doc['machine']}")
    print(f"training: median of {args.blocks} blocks of {args.steps} steps (autograd, fp32); evaluation: median "
          f"of {args.eval_blocks} runs on {args.eval_n} images; throughput in examples (training) or importance "
          "samples (evaluation) per second; share: matrix products and convolutions alone / the row's time\n")
    if "baseline" not in doc:
        print("| row | time | per second | share in products |\n|---|---|---|---|")
        for spec, row in doc["tree"].items():
            print(f"| {spec} | {' | '.join(cells(row))} |")
        return
    print("| row | baseline | this tree | baseline / this tree | per second (baseline -> tree) | share in products "
          "(baseline -> tree) |\n|---|---|---|---|---|---|")
    for spec, row in doc["tree"].items():
        base = doc["baseline"][spec]
        (t, rate, share), (bt, brate, bshare) = cells(row), cells(base)
        ratio = statistics.median(base["s"]) / statistics.median(row["s"])
        print(f"| {spec} | {bt} | {t} | {ratio:.2f}x | {brate} -> {rate} | {bshare} -> {share} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="*", default=list(PRESETS), help="PRESET or PRESET:iwae (default: %(default)s)")
    p.add_argument("--evals", nargs="*", default=list(EVALS),
                   help="PRESET:K evaluations, PRESET:SCORE:K anomaly scores (default: %(default)s)")
    p.add_argument("--steps", type=int, default=20, help="training steps per timed block")
    p.add_argument("--blocks", type=int, default=5, help="timed blocks per training row")
    p.add_argument("--eval-n", type=int, default=1000, help="images per evaluation")
    p.add_argument("--eval-blocks", type=int, default=3, help="timed evaluations per evaluation row")
    p.add_argument("--threads", type=int, help="torch threads (default: PyTorch's)")
    p.add_argument("--baseline", help="the src folder of another checkout to time against, in child processes; "
                                      "'allocator': this tree with the C allocator's default settings")
    p.add_argument("--keep-freed-memory", action="store_true", help="raise glibc's mmap and trim thresholds "
                   "first, as the vaekit command line does (vaekit.allocator)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds against --baseline")
    p.add_argument("--no-floor", action="store_true", help="skip the matrix-product floor")
    p.add_argument("--json", help="also write the measurements here")
    p.add_argument("--child", help=argparse.SUPPRESS)  # measure this process's library into this file
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.keep_freed_memory:
        from vaekit import allocator

        allocator.keep_freed_memory()
    if args.child:
        Path(args.child).write_text(json.dumps(measure(args, not args.no_floor)))
        return
    doc = against(args) if args.baseline else {"tree": measure(args, not args.no_floor)["rows"], "machine": machine()}
    table(doc, args)
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
