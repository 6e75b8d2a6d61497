"""Digests of the weights that a few short training runs end with: the check that a refactoring changed no result.

Each case trains from a fixed seed on digits (and, with ``--mnist``, on MNIST) through one step path: the fused
CPU step (``seed`` preset), autograd (``iwae`` preset with the IWAE objective, the conv preset), and the
CUDA-graph step run eagerly on the CPU. With ``--reference`` it compares each digest with one recorded at another
commit (``benchmarks/results/parity_0d7e08f.json``: the commit before the model-of-parts redesign); equal
digests mean bitwise equal weights. Digests hold for one PyTorch build on one CPU kind: the reference names both.

    VAEKIT_DATA=../shared/data python benchmarks/parity.py --mnist --reference benchmarks/results/parity_0d7e08f.json

Digests change with any change of float rounding. ``--band FILE`` records the coarser check that survives those:
the ``seed`` preset for BAND_STEPS optimizer steps on MNIST, once per seed, and the band of test negative ELBOs
that ``tests/test_benchmarks.py`` holds a run of it to (``benchmarks/results/parity_band_seed_mnist.json``):

    VAEKIT_DATA=../shared/data python benchmarks/parity.py --band benchmarks/results/parity_band_seed_mnist.json
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import platform
import statistics
import sys
import time
from contextlib import contextmanager

import torch

import vaekit

# float32: the digests pin float32 numerics (train.precision = auto would take bfloat16 products on some CPUs)
DIGITS = {"data.dataset": "digits", "train.device": "cpu", "train.checkpoint_every": 0, "train.precision": "fp32"}
CASES: dict[str, tuple[str, dict, bool]] = {  # name -> (preset, overrides, run the static step eagerly)
    "seed-fused": ("seed", {"train.epochs": 3}, False),
    "seed-fused-cond-freebits-warmup": ("seed", {"train.epochs": 2, "model.conditional": True,
                                                 "train.free_bits": 0.1, "train.kl_warmup_epochs": 1.5,
                                                 "model.likelihood": "gaussian"}, False),
    "iwae-autograd": ("iwae", {"train.epochs": 2, "train.objective": "iwae", "train.iw_k": 5}, False),
    "iwae-elbo-autograd-learned": ("iwae", {"train.epochs": 2, "model.likelihood": "gaussian-learned",
                                            "data.binarize": "none", "train.fused_step": False}, False),
    "conv-autograd": ("conv", {"train.epochs": 1}, False),
    "seed-static-eager": ("seed", {"train.epochs": 2, "train.drop_last": True}, True),
    "iwae-static-eager-cond": ("iwae", {"train.epochs": 2, "train.drop_last": True, "model.conditional": True,
                                        "train.objective": "iwae", "train.iw_k": 3, "train.kl_warmup_steps": 30},
                               True),
}
MNIST_CASES = {"seed-fused": ("seed", {"train.epochs": 2}, False),
               "iwae-autograd": ("iwae", {"train.epochs": 1, "train.objective": "iwae", "train.iw_k": 5}, False),
               "seed-static-eager": ("seed", {"train.epochs": 1, "train.drop_last": True}, True)}


BAND_STEPS = 300  # optimizer steps of the band's runs: BAND_STEPS batches of 128 MNIST training images, one epoch
BAND_SEEDS = (1, 2, 3, 4, 5)
BAND_TEST_N = 2000  # the first test images, grey levels, negative ELBO with the evaluation's seed
BAND_MARGIN = 1.5  # nats beyond the recorded seeds' range: other CPUs round differently, and runs drift apart


def band_run(seed: int, steps: int = BAND_STEPS) -> dict[str, float]:
    """The ``seed`` preset for ``steps`` optimizer steps (the first steps x 128 MNIST training images, one epoch,
    fused CPU step) from ``seed``: its last training and its test negative ELBO."""
    config = vaekit.preset("seed").override({"data.dataset": "mnist", "train.epochs": 1, "train.seed": seed,
                                             "train.device": "cpu", "train.checkpoint_every": 0,
                                             "train.precision": "fp32"})
    splits = vaekit.load_data(config.data)
    n = steps * config.train.batch_size
    train = dataclasses.replace(splits.train, stored=splits.train.stored[:n], y=splits.train.y[:n])
    result = vaekit.train(config, splits=dataclasses.replace(splits, train=train))
    test = vaekit.evaluate_model(result.model, splits.test.x[:BAND_TEST_N], iw_samples=0, seed=config.data.eval_seed)
    return {"steps": len(result.history) * steps, "train_neg_elbo": result.history[-1]["train_neg_elbo"],
            "test_neg_elbo": test["neg_elbo"]}


def record_band(path: str) -> None:
    runs = {seed: band_run(seed) for seed in BAND_SEEDS}
    values = [r["test_neg_elbo"] for r in runs.values()]
    doc = {"command": "VAEKIT_DATA=../shared/data python benchmarks/parity.py --band " + path,
           "what": f"seed preset, {BAND_STEPS} steps (the first {BAND_STEPS} x 128 MNIST training images, one "
                   f"epoch), test negative ELBO of the first {BAND_TEST_N} test images",
           "runs": {str(k): v for k, v in runs.items()}, "mean": statistics.mean(values),
           "band": [min(values) - BAND_MARGIN, max(values) + BAND_MARGIN], "margin": BAND_MARGIN,
           "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "machine": platform.processor() or platform.machine(), "python": sys.version.split()[0]}
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
    print(f"test -ELBO over seeds {BAND_SEEDS}: {', '.join(f'{v:.2f}' for v in values)}; band {doc['band']}")


def digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, shapes and bytes of every tensor, in name order."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


@contextmanager
def static_step_on_cpu(enabled: bool):
    """Pretend the CUDA-graph path is available on the CPU: the static step then runs eagerly."""
    if not enabled:
        yield
        return
    from vaekit.training import graphs

    real = graphs.fast_path_blocker
    graphs.fast_path_blocker = lambda device, world, enabled: None
    try:
        yield
    finally:
        graphs.fast_path_blocker = real


def run(cases: dict, dataset: dict) -> dict[str, dict]:
    out = {}
    for name, (preset, overrides, static) in cases.items():
        cfg = vaekit.preset(preset).override({**dataset, **overrides})
        t0 = time.perf_counter()
        with static_step_on_cpu(static):
            result = vaekit.train(cfg)
        out[name] = {"sha256": digest(result.model.state_dict()), "seconds": round(time.perf_counter() - t0, 2),
                     "final_train_neg_elbo": result.history[-1]["train_neg_elbo"]}
        out[name]["weights"] = {k: v.detach().cpu().clone() for k, v in result.model.state_dict().items()}
        print(f"{name:36s} {out[name]['sha256']}  ({out[name]['seconds']} s)", flush=True)
    return out


def compare(results: dict, reference: str) -> None:
    with open(reference) as f:
        ref = json.load(f)
    print(f"against {reference} (commit {ref.get('commit')}, {ref.get('cpu')}, torch {ref.get('torch')}):")
    for ds, cases in results.items():
        for name, r in cases.items():
            old = ref.get(ds, {}).get(name, {}).get("sha256")
            verdict = "no reference" if old is None else "bitwise equal" if old == r["sha256"] else "DIFFERS"
            print(f"  {ds:6s} {name:36s} {verdict}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mnist", action="store_true", help="also the MNIST cases (needs VAEKIT_DATA)")
    p.add_argument("--json", help="write the digests here")
    p.add_argument("--save-weights", help="write each digits case's weights to DIR/<case>.safetensors")
    p.add_argument("--reference", help="a JSON file written by --json at another commit: say which digests agree")
    p.add_argument("--cases", nargs="+", choices=sorted(CASES), help="only these digits cases (default: all)")
    p.add_argument("--band", help="record the MNIST band of the seed preset's short runs in this JSON file, then stop")
    args = p.parse_args()
    if args.band:
        record_band(args.band)
        return
    results = {"digits": run({name: CASES[name] for name in args.cases or CASES}, DIGITS)}
    if args.mnist:
        results["mnist"] = run(MNIST_CASES, {"data.dataset": "mnist", "train.device": "cpu", "train.precision": "fp32",
                                             "train.checkpoint_every": 0})
    if args.reference:
        compare(results, args.reference)
    if args.save_weights:
        from pathlib import Path

        from safetensors.torch import save_file

        Path(args.save_weights).mkdir(parents=True, exist_ok=True)
        for name, r in results["digits"].items():
            save_file(r["weights"], str(Path(args.save_weights) / f"{name}.safetensors"))
    if args.json:
        doc = {ds: {n: {k: v for k, v in r.items() if k != "weights"} for n, r in rs.items()}
               for ds, rs in results.items()}
        doc["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)


if __name__ == "__main__":
    main()
