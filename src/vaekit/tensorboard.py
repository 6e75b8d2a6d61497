"""TensorBoard logs of a training run (the optional ``tensorboard`` extra): every per-epoch metric, the KL of
each layer and latent dimension, and sample and reconstruction grids of image models every few epochs.

    vaekit train --tensorboard runs/tb ...        then    tensorboard --logdir runs/tb
    vaekit.train(config, callbacks=[vaekit.tensorboard.TensorBoard("runs/tb")])
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vaekit import data, plots
from vaekit.config import Config
from vaekit.errors import ConfigError
from vaekit.model import VAE
from vaekit.training import Callback

SCALARS = ("train_loss", "train_neg_elbo", "train_recon", "train_kl", "val_neg_elbo", "val_recon", "val_kl",
           "beta", "active_units", "time_s", "train_skipped_steps")


def summary_writer(log_dir: str | Path) -> Any:
    """PyTorch's SummaryWriter for ``log_dir``; a ConfigError saying how to install it where it is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("TensorBoard logs need the tensorboard package: pip install 'vaekit[tensorboard]'") from None
    return SummaryWriter(str(log_dir))


class TensorBoard(Callback):
    """Writes a run's epoch records to ``log_dir`` as TensorBoard scalars (``loss/...``, ``kl/layer_l``,
    ``kl_per_dim/j``), its config as text, and for image models a grid of samples and of test inputs over
    their reconstructions every ``images_every`` epochs and at the end (0: only at the end)."""

    def __init__(self, log_dir: str | Path, images_every: int = 5, n_images: int = 8) -> None:
        self.log_dir, self.images_every, self.n_images = Path(log_dir), images_every, n_images
        self.writer: Any = None
        self.model: VAE | None = None
        self.test: data.Split | None = None

    def on_train_start(self, config: Config, steps_per_epoch: int) -> None:
        self.writer = summary_writer(self.log_dir)
        self.writer.add_text("config", f"```\n{json.dumps(config.to_dict(), indent=2)}\n```")

    def on_model(self, model: VAE, test: data.Split) -> None:
        self.model, self.test = model, test

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        epoch = record["epoch"]
        for key in SCALARS:
            if isinstance(record.get(key), (int, float)):
                self.writer.add_scalar(f"loss/{key}" if key.endswith(("elbo", "recon", "kl", "loss")) else key,
                                       record[key], epoch)
        for layer, kl in enumerate(record.get("kl_per_layer") or ()):
            self.writer.add_scalar(f"kl/layer_{layer}", kl, epoch)
        for j, kl in enumerate(record.get("kl_per_dim") or ()):
            self.writer.add_scalar(f"kl_per_dim/{j}", kl, epoch)
        if self.images_every and epoch % self.images_every == 0:
            self._images(epoch)
        self.writer.flush()

    def on_train_end(self, model: VAE, test: data.Split) -> None:
        self._images(None)
        self.writer.close()

    @torch.no_grad()
    def _images(self, epoch: int | None) -> None:
        """Samples and reconstructions of an image model, drawn without touching the run's random state."""
        model, test = self.model, self.test
        if model is None or test is None or not plots.is_image_shape(model.data_shape) or model.config.conditional:
            return
        was_training = model.training
        model.eval()
        with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
            recon, samples = plots.preview_images(model, test.x, self.n_images, self.n_images ** 2 // 2)
        model.train(was_training)
        suffix = "" if epoch is not None else "_final"
        for name, images in (("samples", samples), ("reconstructions", recon)):
            tiled = plots.grid(images.cpu(), self.n_images)  # (H, W) grey or (H, W, C)
            self.writer.add_image(name + suffix, torch.from_numpy(tiled), epoch or 0,
                                  dataformats="HW" if tiled.ndim == 2 else "HWC")
