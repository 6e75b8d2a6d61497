"""Data-parallel training with 2 gloo processes on the CPU is the same computation as one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

import vaekit

from conftest import digits_config

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(**overrides) -> vaekit.Config:
    # 1294 training examples in batches of 64: the last global batch (14) is split 7 + 7, and with
    # batch 60 the last one (34) is split 17 + 17; with 3 processes it would be uneven.
    return digits_config(**{"train.epochs": 2, "train.lr": 3e-3, **overrides})


NO_SHAPE = torch.Size()


def posterior_mean_sample(self, sample_shape=NO_SHAPE):
    """z = mu: removes the posterior noise, the one thing processes draw independently."""
    return self.loc.expand(self._extended_shape(sample_shape))


class StopAfterFirstEpoch(vaekit.Callback):
    def on_epoch_end(self, record):
        self.stop_training = True


def worker(rank: int, world: int, port: int, out: str, overrides: dict, stop_early: bool = False) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributions.Normal.rsample = posterior_mean_sample
    torch.set_num_threads(1)
    result = vaekit.train(config(**overrides), callbacks=[StopAfterFirstEpoch()] if stop_early else ())
    save_file({k: v.contiguous() for k, v in result.model.state_dict().items()}, f"{out}/rank{rank}.safetensors")
    with open(f"{out}/history{rank}.json", "w") as f:
        json.dump(result.history, f)


def single_process(overrides: dict, monkeypatch) -> tuple[dict, list]:
    monkeypatch.setattr(torch.distributions.Normal, "rsample", posterior_mean_sample)
    # autograd's step, as in the processes: the fused CPU step draws its noise without Normal.rsample
    result = vaekit.train(config(**{**overrides, "train.fused_step": False}))
    return result.model.state_dict(), result.history


@pytest.mark.parametrize("overrides", [
    {}, {"data.binarize": "dynamic", "train.batch_size": 60},
    # the model families; the hierarchy's gradient is clipped after the all-reduce
    {"model.latent_dim": 3, "model.lower_latent_dims": [5], "train.grad_clip": 1.0},
    {"model.prior": "vamp", "model.prior_components": 4},
    {"model.arch": "conv", "model.channels": [4, 8], "model.latent_dim": 3, "model.latent_channels": 2},
    {"model.prior": "mog", "model.prior_components": 3, "model.posterior": "iaf", "model.flow_hidden": 16},
])
def test_two_processes_match_one_with_the_same_global_batch(tmp_path, monkeypatch, overrides):
    mp.spawn(worker, args=(2, free_port(), str(tmp_path), overrides), nprocs=2, join=True)
    rank0, rank1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "replicas diverged"
    one, history = single_process(overrides, monkeypatch)
    for k in one:
        torch.testing.assert_close(rank0[k], one[k], rtol=1e-4, atol=1e-5, msg=k)
    two_history = json.loads((tmp_path / "history0.json").read_text())
    for a, b in zip(two_history, history, strict=True):
        assert a["train_neg_elbo"] == pytest.approx(b["train_neg_elbo"], rel=1e-5)
        assert a["val_neg_elbo"] == pytest.approx(b["val_neg_elbo"], rel=1e-5)
    init = vaekit.VAE(config(**overrides).override({"model.data_shape": [1, 8, 8]}).model)
    moved = sum((one[k] - v).abs().sum() for k, v in init.state_dict().items())
    assert moved > 1.0  # training did change the weights, so the match above is not trivial


def test_a_stop_asked_for_on_rank_0_stops_every_process(tmp_path):
    mp.spawn(worker, args=(2, free_port(), str(tmp_path), {"train.epochs": 3}, True), nprocs=2, join=True)
    for rank in (0, 1):
        assert len(json.loads((tmp_path / f"history{rank}.json").read_text())) == 1


def test_torchrun_command_line(tmp_path):
    """``torchrun --nproc_per_node=2 -m vaekit train`` writes one run directory, from rank 0 only."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "-m", "vaekit", "train", "--dataset", "digits", "--epochs", "2", "--hidden", "32", "--latent-dim", "4",
           "--device", "cpu", "--quiet", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[:3000] + "\n...\n" + proc.stderr[-1000:]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(s)["epoch"] for s in lines] == [1, 2]
    assert proc.stdout.count("wrote") == 3  # checkpoint and two PNGs, printed once
    vaekit.load(out)


NODE_SCRIPT = """
import json, os, sys
import torch, vaekit
from safetensors.torch import save_file
sys.path.insert(0, {tests!r})
from test_distributed import posterior_mean_sample
torch.distributions.Normal.rsample = posterior_mean_sample
torch.set_num_threads(1)
config, out, resume = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3] == "resume"
result = vaekit.resume(out, {{"train.epochs": config["train.epochs"]}}) if resume else \\
    vaekit.train(vaekit.Config().override(config), out)
if os.environ["RANK"] == "0":  # vaekit has closed the process group by now
    save_file({{k: v.contiguous() for k, v in result.model.state_dict().items()}}, out + "/weights.safetensors")
"""


def two_nodes(script, config: dict, out, resume: bool = False) -> None:
    """``script`` under torchrun as two nodes of one process each, meeting by c10d rendezvous on 127.0.0.1."""
    port, procs = free_port(), []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "vaekit-test",
               "--rdzv-conf", f"is_host={'true' if node == 0 else 'false'}", "--local-addr", "127.0.0.1",
               str(script), json.dumps(config), str(out), "resume" if resume else "train"]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      env={**os.environ, "OMP_NUM_THREADS": "1"}))
    for node, proc in enumerate(procs):
        log = proc.communicate(timeout=240)[0]
        assert proc.returncode == 0, f"node {node}:\n{log[-3000:]}"


def test_two_nodes_streaming_from_disk_match_one_process_and_resume(tmp_path, monkeypatch):
    """torchrun --nnodes 2 (one gloo process a node) on an array read from disk: the weights of one process
    holding it in memory; checkpoints from rank 0 only, and a two-node resume continues the two-node run."""
    images = tmp_path / "images.npy"
    np.save(images, np.random.default_rng(0).integers(0, 256, (300, 1, 8, 8), dtype=np.uint8))
    script = tmp_path / "node.py"
    script.write_text(NODE_SCRIPT.format(tests=str(Path(__file__).parent)))
    base = {"data.dataset": str(images), "data.binarize": "dynamic", "train.epochs": 2, "train.batch_size": 60,
            "model.hidden": [32], "model.latent_dim": 4, "train.device": "cpu", "data.max_memory_gb": 1e-6}
    two_nodes(script, base, tmp_path / "whole")
    monkeypatch.setattr(torch.distributions.Normal, "rsample", posterior_mean_sample)
    one = vaekit.train(vaekit.Config().override({**base, "data.max_memory_gb": 0.0, "train.fused_step": False}))
    whole = load_file(tmp_path / "whole" / "weights.safetensors")
    for k, v in one.model.state_dict().items():
        torch.testing.assert_close(whole[k], v, rtol=1e-4, atol=1e-5, msg=k)
    assert len((tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()) == 2  # written once, by rank 0
    two_nodes(script, {**base, "train.epochs": 1}, tmp_path / "split")
    two_nodes(script, {**base, "train.epochs": 2}, tmp_path / "split", resume=True)
    resumed = load_file(tmp_path / "split" / "weights.safetensors")
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)
