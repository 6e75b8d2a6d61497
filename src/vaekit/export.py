"""A trained model for deployment without vaekit: the encoder and the decoder as ONNX graphs (run them with
onnxruntime, the optional extra ``onnx``) or TorchScript modules (``torch.jit.load``), and ``export.json``
naming their inputs and outputs.

The encoder maps x (B, *data_shape) to the top layer's posterior q(z|x) = N(mu, diag(sigma^2)); the decoder maps
a top-layer code z (B, latent_dim) to the parameters of p(x|z) (B, P, *data_shape) and its mean E[x|z]
(B, *data_shape), through the conditional priors' means in a hierarchy, as ``VAE.decode``. A conditional model's
graphs take the class index y (B,) as a second input. The batch size is free in both formats.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vaekit.errors import ConfigError
from vaekit.fileio import atomic_path, atomic_write_bytes
from vaekit.model import VAE

FORMATS = ("onnx", "torchscript")
OPSET = 17


class PosteriorGraph(nn.Module):
    """x [, y] -> (mu, sigma) of the top layer's q(z|x): what the exported encoder computes."""

    def __init__(self, model: VAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        qz_x = self.model.encode(x, y)
        return qz_x.mean, qz_x.stddev


class LikelihoodGraph(nn.Module):
    """z [, y] -> (parameters of p(x|z), E[x|z]): what the exported decoder computes."""

    def __init__(self, model: VAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        params = self.model.likelihood_params(z, y)
        return params, self.model.likelihood_from(params).mean


def export(model: VAE, directory: str | Path, fmt: str = "onnx") -> list[Path]:
    """Write ``encoder`` and ``decoder`` (``.onnx`` or ``.pt``) and ``export.json`` into ``directory``."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    _check_exportable(model)
    model = model.eval().cpu()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    spec = signature(model)
    written = []
    for name, graph, example in _graphs(model):
        path = out / f"{name}.{'onnx' if fmt == 'onnx' else 'pt'}"
        with torch.no_grad(), atomic_path(path) as tmp:
            _write(graph, example, tmp, fmt, spec[name])
        written.append(path)
    doc = {"format": fmt, **spec, "files": [p.name for p in written]}
    atomic_write_bytes(out / "export.json", (json.dumps(doc, indent=2) + "\n").encode())
    return [*written, out / "export.json"]


def signature(model: VAE) -> dict[str, Any]:
    """The inputs and outputs of both graphs: names, shapes ("B" is the free batch size) and dtypes."""
    c = model.config
    label = [{"name": "y", "shape": ["B"], "dtype": "int64", "labels": list(c.labels)}] if c.conditional else []
    shape, d = ["B", *model.data_shape], model.latent_dim
    return {
        "likelihood": c.likelihood, "latent_dim": d, "data_shape": list(model.data_shape),
        "encoder": {"inputs": [{"name": "x", "shape": shape, "dtype": "float32"}, *label],
                    "outputs": [{"name": "mu", "shape": ["B", d]}, {"name": "sigma", "shape": ["B", d]}]},
        "decoder": {"inputs": [{"name": "z", "shape": ["B", d], "dtype": "float32"}, *label],
                    "outputs": [{"name": "params", "shape": ["B", model.n_params, *model.data_shape]},
                                {"name": "mean", "shape": shape}]},
    }


def _check_exportable(model: VAE) -> None:
    qz_x = model.encode(torch.zeros(1, *model.data_shape, device=model.device),
                        None if not model.config.conditional else torch.zeros(1, dtype=torch.long,
                                                                               device=model.device))
    try:
        qz_x.mean, qz_x.stddev  # noqa: B018 - a flow has neither in closed form
    except NotImplementedError:
        raise ConfigError(f"export writes the encoder as (mu, sigma) of a Gaussian; this model's posterior "
                          f"{model.config.posterior!r} has no closed-form mean and scale") from None


def _graphs(model: VAE) -> list[tuple[str, nn.Module, tuple[Tensor, ...]]]:
    y = (torch.zeros(2, dtype=torch.long),) if model.config.conditional else ()
    return [("encoder", PosteriorGraph(model), (torch.zeros(2, *model.data_shape), *y)),
            ("decoder", LikelihoodGraph(model), (torch.zeros(2, model.latent_dim), *y))]


def _write(graph: nn.Module, example: tuple[Tensor, ...], path: Path, fmt: str, spec: dict[str, Any]) -> None:
    # the model's input checks read shapes, which a trace records as constants and warns about; the graphs
    # are tested at other batch sizes, so the warnings would only mislead
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        _trace(graph, example, path, fmt, spec)


def _trace(graph: nn.Module, example: tuple[Tensor, ...], path: Path, fmt: str, spec: dict[str, Any]) -> None:
    if fmt == "torchscript":
        torch.jit.trace(graph, example, check_trace=False).save(str(path))
        return
    inputs = [i["name"] for i in spec["inputs"]]
    outputs = [o["name"] for o in spec["outputs"]]
    torch.onnx.export(graph, example, str(path), input_names=inputs, output_names=outputs, opset_version=OPSET,
                      dynamic_axes={n: {0: "B"} for n in inputs + outputs}, dynamo=False)
