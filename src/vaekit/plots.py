"""Pictures written to PNG with matplotlib: image grids of samples and reconstructions."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor

from vaekit.errors import DataError
from vaekit.fileio import atomic_path


def is_image_shape(shape: tuple[int, ...]) -> bool:
    """True for (C, H, W) with 1 (grey), 3 (RGB) or 4 (RGBA) channels, of any height and width."""
    return len(shape) == 3 and shape[0] in (1, 3, 4)


def grid(images: Tensor, nrow: int, pad: int = 1) -> np.ndarray:
    """Tile (N, C, H, W) images in [0, 1] into one (rows*H, nrow*W[, C]) array with ``pad`` pixel gaps."""
    x = images.detach().float().clamp(0, 1).cpu().numpy()
    n, c, h, w = x.shape
    rows = math.ceil(n / nrow)
    canvas = np.ones((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), dtype=np.float32)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        canvas[:, top : top + h, left : left + w] = x[i]
    return canvas[0] if c == 1 else canvas.transpose(1, 2, 0)


def save_grid(images: Tensor, path: str | Path, nrow: int = 8, scale: int | None = None) -> Path:
    """Write an image grid to ``path`` as PNG (grey for one channel), upscaled ``scale`` times.

    By default small images are enlarged to about 64 pixels so that 8x8 digits stay visible.
    """
    scale = scale or max(2, 64 // max(images.shape[-2:]))
    g = grid(images, nrow)
    g = g.repeat(scale, axis=0).repeat(scale, axis=1)
    path = Path(path)
    with atomic_path(path) as tmp:
        plt.imsave(tmp, g, cmap="gray" if g.ndim == 2 else None, vmin=0, vmax=1, format="png")
    return path


@torch.no_grad()
def labelled_grid(images: Tensor, path: str | Path, nrow: int, row_labels: list[str] | None = None,
                  col_labels: list[str] | None = None, title: str | None = None) -> Path:
    """An image grid (as ``grid``) with a label beside each row and under each column, and a title."""
    canvas = grid(images, nrow)
    _, c, h, w = images.shape
    rows = math.ceil(len(images) / nrow)
    scale = max(1.0, 48 / max(h, w))  # small images drawn at least 48 pixels across
    fig_w = canvas.shape[1] * scale / 100 + (1.4 if row_labels else 0.2)
    fig_h = canvas.shape[0] * scale / 100 + (0.35 if col_labels else 0.1) + (0.35 if title else 0)
    fig, ax = plt.subplots(figsize=(fig_w, fig_h), dpi=100)
    ax.imshow(canvas, cmap="gray" if c == 1 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([1 + i * (w + 1) + w / 2 for i in range(nrow)] if col_labels else [], col_labels or [])
    ax.set_yticks([1 + i * (h + 1) + h / 2 for i in range(rows)] if row_labels else [], row_labels or [])
    ax.tick_params(length=0, labelsize=7)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=8)
    return _save_figure(fig, path)


def write_previews(model, x_test: Tensor, out: Path, n_recon: int = 8, n_samples: int = 64) -> list[Path]:
    """``reconstructions.png`` (inputs above their reconstructions) and ``samples.png`` from the prior."""
    if not is_image_shape(tuple(x_test.shape[1:])):
        return []
    pairs, samples = preview_images(model, x_test, n_recon, n_samples)
    return [save_grid(pairs, out / "reconstructions.png", nrow=len(pairs) // 2),
            save_grid(samples, out / "samples.png", nrow=8)]


def preview_images(model, x_test: Tensor, n_recon: int, n_samples: int) -> tuple[Tensor, Tensor]:
    """The first ``n_recon`` test inputs above their reconstructions (2 * n_recon images), and ``n_samples``
    draws from the prior under a fixed seed."""
    device = next(model.parameters()).device
    x = x_test[:n_recon].to(device)
    g = torch.Generator(device).manual_seed(0)
    return torch.cat([x, model.reconstruct(x)]), model.sample(n_samples, generator=g)


def scatter_2d(points: np.ndarray, labels: np.ndarray | None, path: str | Path, title: str,
               axis_labels: tuple[str, str]) -> Path:
    """A 2-D map of embeddings, coloured by label with a legend when labels are known."""
    fig, ax = plt.subplots(figsize=(7, 6), dpi=110)
    size = float(np.clip(20_000 / len(points), 2, 25))  # dots stay visible for small sets, apart for large
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=size, alpha=0.5, color="tab:blue", linewidths=0)
    else:
        classes = np.unique(labels)
        cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        for i, c in enumerate(classes):
            sel = labels == c
            ax.scatter(points[sel, 0], points[sel, 1], s=size, alpha=0.6, color=cmap(i % cmap.N), linewidths=0,
                       label=str(c))
        ax.legend(title="label", markerscale=max(1.0, 12 / size), loc="best", fontsize=8, frameon=False)
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.set_title(title)
    return _save_figure(fig, path)


def save_gif(frames: Tensor, path: str | Path, seconds_per_frame: float = 0.15, scale: int | None = None) -> Path:
    """An animated GIF that plays the frames forward then back, looping."""
    from PIL import Image

    scale = scale or max(2, 64 // max(frames.shape[-2:]))
    images = []
    for f in frames.detach().float().clamp(0, 1).cpu().numpy():
        a = (f.transpose(1, 2, 0) * 255).round().astype(np.uint8).repeat(scale, 0).repeat(scale, 1)
        images.append(Image.fromarray(a[..., 0] if a.shape[2] == 1 else a))
    loop = images + images[-2:0:-1]
    path = Path(path)
    with atomic_path(path) as tmp:
        loop[0].save(tmp, format="GIF", save_all=True, append_images=loop[1:],
                     duration=int(seconds_per_frame * 1000), loop=0)
    return path


def read_image(path: Path, shape: tuple[int, ...]) -> Tensor:
    """An image file as a (C, H, W) tensor in [0, 1], decoded as a training folder is (``vaekit.data.images``).

    Its size must already be the model's; its channels are converted to the model's.
    """
    from vaekit.data import images  # here, not at the top: several functions take an argument named images

    c, h, w = shape
    try:
        im = images.open_image(path)
    except images.UNREADABLE as e:
        raise DataError(f"cannot read image {path}: {e}") from e
    if (im.height, im.width) != (h, w):
        raise DataError(f"image {path} is {im.width}x{im.height} pixels; the model takes {w}x{h}")
    return torch.from_numpy(np.ascontiguousarray(images.pixels(im, (h, w), c)))


def roc_curve(labels: np.ndarray, scores: np.ndarray, path: str | Path, title: str) -> Path:
    """The ROC curve of scores against binary labels (1 = anomaly), with its AUC and the chance diagonal."""
    from sklearn.metrics import roc_auc_score
    from sklearn.metrics import roc_curve as sk_roc_curve

    fpr, tpr, _ = sk_roc_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=110)
    ax.plot(fpr, tpr, color="tab:blue", label=f"ROC AUC = {roc_auc_score(labels, scores):.3f}")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    return _save_figure(fig, path)


def anomaly_heatmaps(x: Tensor, recon: Tensor, heat: Tensor, scores: Tensor, path: str | Path, title: str,
                     heat_label: str = "NLL per pixel") -> Path:
    """For each input (columns): the input, its reconstruction, and its per-pixel map with a shared colour scale."""
    n = len(x)
    fig, axes = plt.subplots(3, n, figsize=(1.4 * n + 1.2, 4.6), dpi=110, squeeze=False)
    vmax = float(torch.quantile(heat.flatten().float(), 0.995))  # one extreme pixel should not wash out the rest
    for j in range(n):
        for row, img in enumerate((x[j], recon[j])):
            axes[row, j].imshow(_to_hw(img), cmap="gray" if img.shape[0] == 1 else None, vmin=0, vmax=1)
        im = axes[2, j].imshow(heat[j].numpy(), cmap="inferno", vmin=0, vmax=vmax)
        axes[0, j].set_title(f"{float(scores[j]):.1f}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for row, name in enumerate(("input", "reconstruction", heat_label)):
        axes[row, 0].set_ylabel(name, fontsize=8)
    fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.02, pad=0.01, label=f"{heat_label} (bottom row)")
    fig.suptitle(title, fontsize=9)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)
    return path


def _to_hw(img: Tensor) -> np.ndarray:
    a = img.detach().float().clamp(0, 1).cpu().numpy()
    return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)


def _save_figure(fig: plt.Figure, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def training_curves(history: list[dict], path: str | Path, title: str) -> Path:
    """Four panels over the epochs of a run's ``metrics.jsonl`` records: the negative ELBO, its reconstruction
    and KL parts (training, and validation where there is one) with the KL weight, and the KL of each latent
    dimension (a heat map, dimensions by their final KL)."""
    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), dpi=100)
    for ax, part, name in zip(axes.flat[:3], ("neg_elbo", "recon", "kl"), ("negative ELBO", "reconstruction",
                                                                            "KL"), strict=True):
        for split, style in (("train", "-"), ("val", "--")):
            values = [r.get(f"{split}_{part}") for r in history]
            if any(v is not None for v in values):
                ax.plot(epochs, values, style, label=split)
        ax.set_title(f"{name} (nats per example)")
        ax.set_xlabel("epoch")
        ax.legend(loc="upper right")
    beta = axes[1, 0].twinx()
    beta.plot(epochs, [r.get("beta", float("nan")) for r in history], ":", color="grey")
    beta.set_ylabel("KL weight beta (dotted)")
    _kl_heat_map(axes[1, 1], history)
    fig.suptitle(title)
    return _save_figure(fig, path)


def _kl_heat_map(ax: plt.Axes, history: list[dict]) -> None:
    rows = [r.get("kl_per_dim") for r in history]
    if not rows or any(row is None for row in rows):
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no KL per latent dimension for this model", ha="center", va="center")
        return
    kl = np.asarray(rows, dtype=float).T  # (dims, epochs)
    order = np.argsort(-kl[:, -1])  # the most used dimensions at the top
    im = ax.imshow(kl[order], aspect="auto", cmap="viridis", interpolation="nearest",
                   extent=(history[0]["epoch"] - 0.5, history[-1]["epoch"] + 0.5, len(kl) - 0.5, -0.5))
    ax.set_title("KL per latent dimension (sorted by the last epoch's)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("dimension rank")
    plt.colorbar(im, ax=ax, label="nats")
