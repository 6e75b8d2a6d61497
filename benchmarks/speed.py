"""Seconds per epoch of the seed VAE against a pytorch/examples-style loop, and of any preset, with the floor.

The reference re-implements the loop of pytorch/examples ``vae/main.py``: a DataLoader over MNIST whose
``__getitem__`` turns each uint8 image into a PIL image and then a float tensor (what torchvision's MNIST
with ``ToTensor`` does), a 784-400-20 MLP with sigmoid outputs and summed BCE + analytic KL, Adam 1e-3,
``loss.item()`` every step, and a test pass after every epoch as the script does. vaekit trains the ``seed``
preset on the same data (no per-epoch evaluation: the preset has no validation split). The two run
interleaved, one epoch each in turn, so a change in the machine's speed affects both alike. The table gives
the training pass alone and the whole epoch (training + the per-epoch test pass), and the test loss of each
(BCE on grey levels + KL, one posterior sample, per example) after the same number of epochs.

Each ``--precision`` (default: fp32 and bf16 where the CPU multiplies bfloat16 natively, then auto's choice
is named) trains its own vaekit run, interleaved with its own reference run, so each ratio is measured
against the reference at the same moment. Medians leave out the first epoch (warm-up, or a CUDA graph's
capture), which is reported apart. On the CPU the script also measures the step's matrix-product floor
(benchmarks/floor.py: the step's products alone, at its shapes, in float32 and in bfloat16) and gives each
row's share of it: floor time / training-pass time.

``--presets conv,hvae,...`` times other presets instead (no reference): each one's epoch, samples per second
and share of its floor, on the CPU or ``--device cuda``.

    VAEKIT_DATA=../shared/data python benchmarks/speed.py --epochs 10
    VAEKIT_DATA=../shared/data python benchmarks/speed.py --presets seed,iwae,conv,hvae,hvae-conv --epochs 3
    VAEKIT_DATA=../shared/data python benchmarks/speed.py --device cuda --presets seed,conv,hvae --epochs 5 \
        --precision fp32,bf16 --batch-size 1024
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

import vaekit
from vaekit import allocator, devices
from vaekit.data import mnist

sys.path.insert(0, str(Path(__file__).parent))
import floor


class MNISTImages(Dataset):
    """Per-sample access as torchvision's MNIST + ToTensor does it: uint8 tensor -> PIL -> float tensor."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.data, self.targets = torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img, target = self.data[i], int(self.targets[i])
        return to_tensor(Image.fromarray(img.numpy(), mode="L")), target


def to_tensor(pic: Image.Image) -> torch.Tensor:
    """What torchvision's ToTensor does for an 8-bit PIL image: HWC uint8 -> CHW float in [0, 1]."""
    img = torch.from_numpy(np.array(pic, np.uint8, copy=True))
    img = img.view(pic.size[1], pic.size[0], len(pic.getbands())).permute((2, 0, 1)).contiguous()
    return img.to(dtype=torch.get_default_dtype()).div(255)


class ReferenceVAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
        self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h1 = F.relu(self.fc1(x.view(-1, 784)))
        mu, logvar = self.fc21(h1), self.fc22(h1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar


def reference_loss(recon_x, x, mu, logvar) -> torch.Tensor:
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    return bce - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


class ReferenceRun:
    """The pytorch/examples loop, one epoch at a time: a training pass, then its per-epoch test pass.

    It keeps a random state of its own, so running its epochs between vaekit's changes neither run.
    """

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        saved = torch.get_rng_state()
        torch.manual_seed(args.seed)
        n = args.limit  # None: all
        self.train_set = MNISTImages(*(a[:n] for a in mnist.load_split("train", None)))
        test_set = MNISTImages(*(a[:n] for a in mnist.load_split("test", None)))
        kwargs = {"num_workers": 1, "pin_memory": True} if device.type == "cuda" else {}
        self.train_loader = DataLoader(self.train_set, batch_size=args.batch_size, shuffle=True, **kwargs)
        self.test_loader = DataLoader(test_set, batch_size=args.batch_size, shuffle=True, **kwargs)
        self.model = ReferenceVAE().to(device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.device, self.epoch = device, 0
        self.rng, self.log = torch.get_rng_state(), io.StringIO()  # it prints every 10 batches
        self.train_s: list[float] = []
        self.test_s: list[float] = []
        self.test_loss = float("nan")
        torch.set_rng_state(saved)

    def run_epoch(self) -> None:
        saved = torch.get_rng_state()
        torch.set_rng_state(self.rng)
        self.epoch += 1
        t0 = time.perf_counter()
        self._train()
        t1 = time.perf_counter()
        self.test_loss = self._test()
        self.train_s.append(t1 - t0)
        self.test_s.append(time.perf_counter() - t1)
        self.rng = torch.get_rng_state()
        torch.set_rng_state(saved)

    def _train(self) -> None:
        self.model.train()
        train_loss = 0.0
        for batch_idx, (x, _) in enumerate(self.train_loader):
            x = x.to(self.device)
            self.opt.zero_grad()
            recon, mu, logvar = self.model(x)
            loss = reference_loss(recon, x, mu, logvar)
            loss.backward()
            train_loss += loss.item()
            self.opt.step()
            if batch_idx % 10 == 0:
                print(f"Train Epoch: {self.epoch} [{batch_idx * len(x)}/{len(self.train_set)}]\tLoss: "
                      f"{loss.item() / len(x):.6f}", file=self.log)
        print(f"====> Epoch: {self.epoch} Average loss: {train_loss / len(self.train_set):.4f}", file=self.log)

    def _test(self) -> float:
        self.model.eval()
        test_loss = 0.0
        with torch.no_grad():
            for x, _ in self.test_loader:
                x = x.to(self.device)
                recon, mu, logvar = self.model(x)
                test_loss += reference_loss(recon, x, mu, logvar).item()
        return test_loss / len(self.test_loader.dataset)


class Interleave(vaekit.Callback):
    """After each vaekit epoch, one reference epoch: drift in the machine's speed hits both alike."""

    def __init__(self, reference: ReferenceRun | None, label: str) -> None:
        self.reference, self.label = reference, label
        self.step_path = ""

    def on_step_path(self, description: str) -> None:
        self.step_path = description

    def on_epoch_end(self, record: dict) -> None:
        line = f"{self.label} epoch {record['epoch']}: vaekit {record['time_s']:.2f} s"
        if self.reference is not None:
            self.reference.run_epoch()
            r = self.reference
            line += f"; reference train {r.train_s[-1]:.2f} s + test {r.test_s[-1]:.2f} s"
        print(line, flush=True)


def mnist_splits(config: vaekit.Config, limit: int | None) -> vaekit.data.Splits:
    """MNIST as the config prepares it; with ``limit``, the first N training and test images only."""
    splits = vaekit.load_data(config.data)
    if limit:  # the same first images as the reference's
        splits = dataclasses.replace(splits, **{
            name: dataclasses.replace(split, stored=split.stored[:limit], y=split.y[:limit])
            for name, split in (("train", splits.train), ("test", splits.test))})
    return splits


def train_timed(args: argparse.Namespace, device: torch.device, preset: str, precision: str,
                reference: ReferenceRun | None) -> dict:
    """Train ``preset`` on MNIST for ``args.epochs`` epochs (interleaved with ``reference``); epoch times, the
    test -ELBO at the end, and which step ran."""
    config = vaekit.preset(preset).override({
        "data.dataset": "mnist", "data.val_size": 0, "train.epochs": args.epochs, "train.seed": args.seed,
        "train.device": device.type, "train.precision": precision,
        **({"train.batch_size": args.batch_size} if args.batch_size else {})})
    splits = mnist_splits(config, args.limit)
    hook = Interleave(reference, f"{preset} {precision}")
    result = vaekit.train(config, callbacks=[hook], splits=splits)
    test = vaekit.evaluate_model(result.model, splits.test.x.to(device), iw_samples=0)
    row = {"preset": preset, "precision": precision, "step": hook.step_path, "n_train": len(splits.train),
           "batch_size": config.train.batch_size, "train_s": [r["time_s"] for r in result.history],
           "test_s": [0.0] * args.epochs, "test_loss": test["neg_elbo"]}
    if device.type == "cpu" and not args.no_floor:  # right after the epochs it is compared with
        row["floor_s"] = step_floor(preset, args.batch_size, result.precision, row["n_train"])
    return row


def step_floor(preset: str, batch_size: int | None, precision: str, n_train: int) -> dict[str, float]:
    """The floor of one epoch of ``preset``'s CPU step: its products alone, in float32 and bfloat16 (where the
    CPU has native bfloat16 products), times the steps of an epoch."""
    batch = batch_size or vaekit.preset(preset).train.batch_size
    products = floor.capture(floor.training_step(preset, batch, precision))
    steps_per_epoch = -(-n_train // batch)
    dtypes = {"fp32": torch.float32, **({"bf16": torch.bfloat16} if devices.cpu_bf16_isa() else {})}
    return {name: floor.floor_seconds(products, dtype) * steps_per_epoch for name, dtype in dtypes.items()}


def floor_shares(row: dict, train_s: float) -> str:
    """The row's fp32 and bf16 floors as shares of its training pass, two table cells ('-' where unmeasured)."""
    floors = row.get("floor_s", {})
    return " | ".join(f"{floors[k] / train_s:.0%}" if k in floors else "-" for k in ("fp32", "bf16"))


def median_after_first(times: list[float]) -> float:
    """The median epoch, leaving out the first (warm-up or graph capture) when there are others."""
    return statistics.median(times[1:] if len(times) > 1 else times)


def machine(device: torch.device, kept_freed_memory: bool = False) -> str:
    """The device this ran on, in words: the GPU's name, or the CPU's with its vector and bfloat16 features and
    whether the C allocator keeps freed memory."""
    if device.type == "cuda":
        return torch.cuda.get_device_name()
    features = devices.cpu_features()
    shown = [f for f in ("avx2", "avx512_f", "avx512_bf16", "amx_bf16") if features.get(f)]
    return (f"{devices.cpu_name()} ({', '.join(shown) or 'no AVX2'}; bfloat16 products: "
            f"{devices.cpu_bf16_isa() or 'emulated'}), {torch.get_num_threads()} threads, C allocator "
            f"{'keeps freed memory' if kept_freed_memory else 'as it was'}")


def precisions(args: argparse.Namespace) -> list[str]:
    """The precisions to time: those asked for, or fp32 and (where native here) bf16."""
    if args.precision:
        return args.precision.split(",")
    return ["fp32", "bf16"] if args.device == "cuda" or devices.cpu_bf16_isa() else ["fp32"]


def against_reference(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """The seed preset in each precision, each interleaved with a reference run of its own."""
    rows = []
    for precision in precisions(args):
        reference = ReferenceRun(args, device)
        row = train_timed(args, device, "seed", precision, reference)
        rows.append({**row, "reference": {"train_s": reference.train_s, "test_s": reference.test_s,
                                          "test_loss": reference.test_loss}})
    return rows


def print_reference_table(rows: list[dict], args: argparse.Namespace, device: torch.device) -> None:
    n = rows[0]["n_train"]
    print(f"\nseed VAE (784-400-20), MNIST ({n:,} training images), batch {rows[0]['batch_size']}, "
          f"{args.epochs} epochs each interleaved with its own reference run, "
          f"{machine(device, args.kept_freed_memory)}, torch {torch.__version__}; medians over epochs "
          f"2-{args.epochs} (epoch 1 apart)")
    print("| loop | precision | training pass s/epoch | epoch 1 s | samples/s | speed-up | whole epoch s (with the "
          "test pass) | speed-up | share of fp32 floor | share of bf16 floor | test -ELBO after "
          f"{args.epochs} epochs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        ref = row["reference"]
        ref_train, ref_epoch = median_after_first(ref["train_s"]), median_after_first(
            [a + b for a, b in zip(ref["train_s"], ref["test_s"], strict=True)])
        train = median_after_first(row["train_s"])
        shares = floor_shares(row, train)
        print(f"| pytorch/examples-style | fp32 | {ref_train:.2f} | {ref['train_s'][0]:.2f} | {n / ref_train:,.0f} "
              f"| 1.00x | {ref_epoch:.2f} | 1.00x | - | - | {ref['test_loss']:.2f} |")
        print(f"| vaekit | {row['precision']} | {train:.2f} | {row['train_s'][0]:.2f} | {n / train:,.0f} | "
              f"**{ref_train / train:.2f}x** | {train:.2f} | {ref_epoch / train:.2f}x | {shares} | "
              f"{row['test_loss']:.2f} |")
    for row in rows:
        print(f"{row['precision']}: {row['step']}")


def print_presets_table(rows: list[dict], args: argparse.Namespace, device: torch.device) -> None:
    print(f"\npresets on MNIST, {args.epochs} epochs each, {machine(device, args.kept_freed_memory)}, "
          f"torch {torch.__version__}; medians "
          f"over epochs 2-{args.epochs} (epoch 1, with warm-up or graph capture, apart)")
    print("| preset | precision | batch | s/epoch | epoch 1 s | samples/s | share of fp32 floor | share of bf16 floor "
          "| step |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        train = median_after_first(row["train_s"])
        shares = floor_shares(row, train)
        print(f"| {row['preset']} | {row['precision']} | {row['batch_size']} | {train:.2f} | "
              f"{row['train_s'][0]:.2f} | {row['n_train'] / train:,.0f} | {shares} | {row['step']} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, help="default: each preset's own (128 for seed)")
    p.add_argument("--precision", help="comma-separated, of auto, fp32, bf16 (default: fp32 and, where the "
                                       "device multiplies bfloat16 natively, bf16)")
    p.add_argument("--presets", help="time these presets (comma-separated) instead of seed against the reference")
    p.add_argument("--no-floor", action="store_true", help="skip the matrix-product floor (CPU)")
    p.add_argument("--default-allocator", action="store_true", help="leave the C allocator as it is; by default "
                   "freed memory is kept for reuse, as the vaekit command line does (vaekit/allocator.py), for "
                   "both loops alike")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--limit", type=int, help="only the first N training and test images (a smoke test)")
    args = p.parse_args()
    args.kept_freed_memory = not args.default_allocator and allocator.keep_freed_memory()
    device = torch.device(args.device)
    if args.presets:
        rows = [train_timed(args, device, name, precision, None)
                for name in args.presets.split(",") for precision in precisions(args)]
    else:
        args.batch_size = args.batch_size or 128  # the reference's
        rows = against_reference(args, device)
    (print_presets_table if args.presets else print_reference_table)(rows, args, device)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "machine": machine(device, args.kept_freed_memory),
                       "torch": torch.__version__, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
