"""The model-of-parts redesign changed no result: short runs through every step path end at the weights the
commit before it (0d7e08f) reached, bit for bit, and checkpoints written by that commit load, give the same
outputs (to float rounding) and resume to the same weights (bit for bit).

The digests come from ``benchmarks/parity.py`` at 0d7e08f (``benchmarks/results/parity_0d7e08f.json``). Bitwise
equality holds for one PyTorch build on one CPU kind; elsewhere the digest tests skip, saying why.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import vaekit
from vaekit import evaluation

from conftest import REPO

FIXTURES = REPO / "tests" / "data" / "pre_redesign"  # written by 0d7e08f: a training run and a plain save
REFERENCE = json.loads((REPO / "benchmarks" / "results" / "parity_0d7e08f.json").read_text())


def _parity_module():
    spec = importlib.util.spec_from_file_location("parity", REPO / "benchmarks" / "parity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


parity = _parity_module()


def same_build() -> bool:
    return (torch.__version__ == REFERENCE["torch"]
            and torch.backends.cpu.get_cpu_capability() == REFERENCE["cpu_capability"])


needs_same_build = pytest.mark.skipif(
    not same_build(), reason=f"digests recorded with torch {REFERENCE['torch']} on {REFERENCE['cpu_capability']}; "
    f"this is torch {torch.__version__} on {torch.backends.cpu.get_cpu_capability()}")


@needs_same_build
@pytest.mark.parametrize("case", sorted(parity.CASES))
def test_training_ends_at_the_weights_of_the_commit_before(case):
    results = parity.run({case: parity.CASES[case]}, parity.DIGITS)
    assert results[case]["sha256"] == REFERENCE["digits"][case]["sha256"]


def test_a_model_saved_before_loads_and_computes_the_same():
    expected = load_file(str(FIXTURES / "expected.safetensors"))
    x = expected["x"]
    for layout in ("plain", "run"):
        model = vaekit.load(FIXTURES / layout)
        assert model.config.prior == "standard-normal" and model.config.posterior == "diagonal-gaussian"
        with torch.no_grad():
            q = model.encode(x)
            torch.manual_seed(0)
            nll = evaluation.importance_sampled_nll(model, x.bernoulli(generator=torch.Generator().manual_seed(1)), 16)
            got = {"mu": q.mean, "sigma": q.stddev, "recon": model.reconstruct(x), "nll": nll,
                   "sample": model.sample(3, generator=torch.Generator().manual_seed(0))}
        for k, v in got.items():  # to float rounding: small products may split across threads differently
            torch.testing.assert_close(v, expected[k], rtol=1e-5, atol=1e-6, msg=f"{layout}: {k}")


@needs_same_build
def test_a_run_written_before_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "run", run)
    result = vaekit.resume(run, {"train.epochs": 2})
    assert [r["epoch"] for r in result.history] == [1, 2]
    h = hashlib.sha256()
    for k in sorted(result.model.state_dict()):
        h.update(k.encode())
        h.update(result.model.state_dict()[k].numpy().tobytes())
    assert h.hexdigest() == (FIXTURES / "resumed_to_2_epochs.sha256").read_text().strip()
