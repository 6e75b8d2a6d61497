"""Seconds per epoch of the seed VAE: a pytorch/examples-style loop against vaekit's, in one process.

The reference re-implements the loop of pytorch/examples ``vae/main.py``: a DataLoader over MNIST whose
``__getitem__`` turns each uint8 image into a PIL image and then a float tensor (what torchvision's MNIST
with ``ToTensor`` does), a 784-400-20 MLP with sigmoid outputs and summed BCE + analytic KL, Adam 1e-3,
``loss.item()`` every step, and a test pass after every epoch as the script does. vaekit trains the ``seed``
preset on the same data (no per-epoch evaluation: the preset has no validation split). The two run
interleaved, one epoch each in turn, so a change in the machine's speed affects both alike. The table gives
the training pass alone and the whole epoch (training + the per-epoch test pass), and the test loss of each
(BCE on grey levels + KL, one posterior sample, per example) after the same number of epochs.

    VAEKIT_DATA=../shared/data python benchmarks/speed.py --epochs 10
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import platform
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

import vaekit
from vaekit.data import mnist


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

    def __init__(self, reference: ReferenceRun) -> None:
        self.reference = reference

    def on_epoch_end(self, record: dict) -> None:
        self.reference.run_epoch()
        r = self.reference
        print(f"epoch {record['epoch']}: vaekit {record['time_s']:.2f} s; reference train {r.train_s[-1]:.2f} s "
              f"+ test {r.test_s[-1]:.2f} s", flush=True)


def run(args: argparse.Namespace, device: torch.device) -> dict:
    config = vaekit.preset("seed").override({
        "data.dataset": "mnist", "train.epochs": args.epochs, "train.batch_size": args.batch_size,
        "train.seed": args.seed, "train.device": device.type,
    })
    splits = vaekit.load_data(config.data)
    if args.limit:  # the same first images as the reference's
        splits = dataclasses.replace(splits, **{
            name: dataclasses.replace(split, stored=split.stored[: args.limit], y=split.y[: args.limit])
            for name, split in (("train", splits.train), ("test", splits.test))})
    reference = ReferenceRun(args, device)
    result = vaekit.train(config, callbacks=[Interleave(reference)], splits=splits)
    test = vaekit.evaluate_model(result.model, splits.test.x.to(device), iw_samples=0)
    return {
        "pytorch/examples-style": {"train_s": reference.train_s, "test_s": reference.test_s,
                                   "test_loss": reference.test_loss},
        "vaekit": {"train_s": [r["time_s"] for r in result.history], "test_s": [0.0] * args.epochs,
                   "test_loss": test["neg_elbo"]},
        "n_train": len(splits.train),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--limit", type=int, help="only the first N training and test images (a smoke test)")
    args = p.parse_args()
    device = torch.device(args.device)
    rows = run(args, device)
    n_train = rows.pop("n_train")
    machine = (torch.cuda.get_device_name() if device.type == "cuda"
               else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"\nseed VAE (784-400-20), MNIST ({n_train:,} training images), batch {args.batch_size}, {args.epochs} "
          f"epochs interleaved, {machine}, "
          f"torch {torch.__version__}; medians over epochs")
    print(f"| loop | training pass s/epoch | samples/s | speed-up | whole epoch s (with the per-epoch test pass) "
          f"| speed-up | test loss after {args.epochs} epochs |")
    print("|---|---|---|---|---|---|---|")
    ref = rows["pytorch/examples-style"]
    ref_train = statistics.median(ref["train_s"])
    ref_epoch = statistics.median([a + b for a, b in zip(ref["train_s"], ref["test_s"], strict=True)])
    for name, r in rows.items():
        train = statistics.median(r["train_s"])
        epoch = statistics.median([a + b for a, b in zip(r["train_s"], r["test_s"], strict=True)])
        print(f"| {name} | {train:.2f} | {n_train / train:,.0f} | {ref_train / train:.2f}x | {epoch:.2f} "
              f"| {ref_epoch / epoch:.2f}x | {r['test_loss']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "machine": machine, "torch": torch.__version__, "rows": rows}, f,
                      indent=2)


if __name__ == "__main__":
    main()
