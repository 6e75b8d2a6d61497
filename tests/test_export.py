"""vaekit export: the ONNX graphs run in onnxruntime and the TorchScript modules in torch.jit, with PyTorch's
outputs, for any batch size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import vaekit
from vaekit import export
from vaekit.cli import main

from conftest import digits_config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    plain = {"train.epochs": 1}
    conditional = {"train.epochs": 1, "model.arch": "conv", "model.channels": [4, 8], "model.conditional": True,
                   "model.lower_latent_dims": [3]}
    for name, over in (("plain", plain), ("conditional", conditional)):
        vaekit.train(digits_config(**over), root / name)
    return root


def reference(model, x, z, y):
    with torch.no_grad():
        qz = model.encode(x, y)
        px = model.decode(z, y)
        return qz.mean, qz.stddev, model.likelihood_params(z, y), px.mean


@pytest.mark.parametrize("name", ["plain", "conditional"])
def test_onnx_graphs_match_pytorch_in_onnxruntime(runs, tmp_path, name, capsys):
    ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    model = vaekit.load(runs / name)
    assert main(["export", str(runs / name), "--format", "onnx", "-o", str(tmp_path)]) == 0
    assert "encoder: x ('B', 1, 8, 8)" in capsys.readouterr().out
    spec = json.loads((tmp_path / "export.json").read_text())
    x, z = torch.rand(5, 1, 8, 8), torch.randn(5, model.latent_dim)  # a batch size other than the export's
    y = torch.arange(5) if name == "conditional" else None
    labels = {} if y is None else {"y": y.numpy()}
    enc = ort.InferenceSession(str(tmp_path / "encoder.onnx")).run(None, {"x": x.numpy(), **labels})
    dec = ort.InferenceSession(str(tmp_path / "decoder.onnx")).run(None, {"z": z.numpy(), **labels})
    for got, want in zip([*enc, *dec], reference(model, x, z, y), strict=True):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5)
    assert [o["name"] for o in spec["decoder"]["outputs"]] == ["params", "mean"]
    assert spec["decoder"]["outputs"][0]["shape"] == ["B", 1, 1, 8, 8] and spec["format"] == "onnx"


def test_torchscript_modules_match_pytorch(runs, tmp_path):
    model = vaekit.load(runs / "conditional")
    export.export(model, tmp_path, "torchscript")
    x, z, y = torch.rand(3, 1, 8, 8), torch.randn(3, model.latent_dim), torch.tensor([1, 0, 9])
    got = [*torch.jit.load(str(tmp_path / "encoder.pt"))(x, y), *torch.jit.load(str(tmp_path / "decoder.pt"))(z, y)]
    for a, b in zip(got, reference(model, x, z, y), strict=True):
        torch.testing.assert_close(a, b)


def test_a_flow_posterior_and_an_unknown_format_are_refused(tmp_path):
    flow = vaekit.VAE(digits_config(**{"model.posterior": "iaf", "model.data_shape": [1, 8, 8]}).model)
    with pytest.raises(vaekit.ConfigError, match="posterior 'iaf' has no closed-form mean and scale"):
        export.export(flow, tmp_path)
    with pytest.raises(vaekit.ConfigError, match="unknown export format 'tflite'"):
        export.export(flow, tmp_path, "tflite")
    assert not list(tmp_path.iterdir())


def test_resize_upsampling_exports_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    config = digits_config(**{"model.arch": "conv", "model.channels": [4, 8], "model.upsample": "resize",
                              "model.data_shape": [1, 9, 7]})  # odd sizes: the resize goes to each exact size
    model = vaekit.VAE(config.model).eval()
    export.export(model, tmp_path, "onnx")
    x, z = torch.rand(3, 1, 9, 7), torch.randn(3, model.latent_dim)
    enc = ort.InferenceSession(str(tmp_path / "encoder.onnx")).run(None, {"x": x.numpy()})
    dec = ort.InferenceSession(str(tmp_path / "decoder.onnx")).run(None, {"z": z.numpy()})
    for got, want in zip([*enc, *dec], reference(model, x, z, None), strict=True):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5)
