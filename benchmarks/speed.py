"""Seconds per epoch of the seed VAE: a pytorch/examples-style loop against vaekit's, in one process.

The reference re-implements the loop of pytorch/examples ``vae/main.py``: a DataLoader over MNIST whose
``__getitem__`` turns each uint8 image into a PIL image and then a float tensor (what torchvision's MNIST
with ``ToTensor`` does), a 784-400-20 MLP with sigmoid outputs and summed BCE + analytic KL, Adam 1e-3,
``loss.item()`` every step. vaekit trains the ``seed`` preset on the same data. Both report the test loss
(BCE on grey levels + KL, one posterior sample, per example) after the same number of epochs.

    VAEKIT_DATA=../shared/data python benchmarks/speed.py --epochs 10
"""

from __future__ import annotations

import argparse
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
from vaekit import mnist


class MNISTImages(Dataset):
    """Per-sample access as torchvision's MNIST + ToTensor does it: uint8 tensor -> PIL -> float tensor."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.data, self.targets = torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))

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


def run_reference(args, device) -> dict:
    torch.manual_seed(args.seed)
    train_set = MNISTImages(*mnist.load_split("train", None))
    test_set = MNISTImages(*mnist.load_split("test", None))
    kwargs = {"num_workers": 1, "pin_memory": True} if device.type == "cuda" else {}
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, **kwargs)
    test_loader = DataLoader(test_set, batch_size=args.batch_size, shuffle=False, **kwargs)
    model = ReferenceVAE().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    log = io.StringIO()  # the reference prints a progress line every 10 batches
    for epoch in range(1, args.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        train_loss = 0.0
        for batch_idx, (x, _) in enumerate(train_loader):
            x = x.to(device)
            opt.zero_grad()
            recon, mu, logvar = model(x)
            loss = reference_loss(recon, x, mu, logvar)
            loss.backward()
            train_loss += loss.item()
            opt.step()
            if batch_idx % 10 == 0:
                print(f"Train Epoch: {epoch} [{batch_idx * len(x)}/{len(train_set)}]\tLoss: "
                      f"{loss.item() / len(x):.6f}", file=log)
        times.append(time.perf_counter() - t0)
    model.eval()
    test_loss = 0.0
    with torch.no_grad():
        for x, _ in test_loader:
            x = x.to(device)
            recon, mu, logvar = model(x)
            test_loss += reference_loss(recon, x, mu, logvar).item()
    return {"epoch_s": times, "test_loss": test_loss / len(test_set)}


def run_vaekit(args, device) -> dict:
    config = vaekit.preset("seed").override({
        "data.dataset": "mnist", "train.epochs": args.epochs, "train.batch_size": args.batch_size,
        "train.seed": args.seed, "train.device": device.type,
    })
    splits = vaekit.load_data(config.data)
    result = vaekit.train(config, splits=splits)
    test = vaekit.evaluate_model(result.model, splits.test.x.to(device), iw_samples=0)
    return {"epoch_s": [r["time_s"] for r in result.history], "test_loss": test["neg_elbo"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args()
    device = torch.device(args.device)
    rows = {"pytorch/examples-style": run_reference(args, device), "vaekit": run_vaekit(args, device)}
    machine = (torch.cuda.get_device_name() if device.type == "cuda"
               else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"\nseed VAE (784-400-20), MNIST, batch {args.batch_size}, {args.epochs} epochs, {machine}, "
          f"torch {torch.__version__}")
    print(f"| loop | s/epoch (median) | samples/s | speed-up | test loss after {args.epochs} epochs |")
    print("|---|---|---|---|---|")
    ref = statistics.median(rows["pytorch/examples-style"]["epoch_s"])
    for name, r in rows.items():
        med = statistics.median(r["epoch_s"])
        print(f"| {name} | {med:.2f} | {60000 / med:,.0f} | {ref / med:.2f}x | {r['test_loss']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "machine": machine, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
