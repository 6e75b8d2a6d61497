"""Pictures of a model at the end of training, written by a training callback that the CLI installs."""

from __future__ import annotations

from pathlib import Path

import torch

from vaekit import data, generate, plots
from vaekit.model import VAE
from vaekit.training import Callback


class PreviewWriter(Callback):
    """``reconstructions.png`` (test inputs above their reconstructions) and ``samples.png`` in ``out`` when
    training ends; a conditional model's samples come one row per class. Nothing for data that are not images."""

    def __init__(self, out: str | Path, n: int = 8) -> None:
        self.out, self.n = Path(out), n

    @torch.no_grad()
    def on_train_end(self, model: VAE, test: data.Split) -> None:
        if not model.config.conditional:
            plots.write_previews(model, test.x, self.out)
            return
        if not plots.is_image_shape(test.shape):
            return
        x, y = test.x[: self.n].to(model.device), test.y[: self.n].to(model.device)
        plots.save_grid(torch.cat([x, model.reconstruct(x, y)]), self.out / "reconstructions.png", nrow=len(x))
        plots.save_grid(generate.sample_per_label(model, self.n), self.out / "samples.png", nrow=self.n)
