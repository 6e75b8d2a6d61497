"""Resume: a run interrupted anywhere and resumed ends bitwise where the uninterrupted run ends.

Also early stopping, the non-finite guards, and a kill test: real ``python -m vaekit train`` processes killed
with SIGKILL at several points (mid-epoch, between the files of a checkpoint, between a temporary file and its
rename, before and after the switch to a new checkpoint), each resumed with ``--resume``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

import vaekit
from vaekit import CheckpointError, ConfigError, TrainingError, checkpoint, objectives
from vaekit.fileio import KILL_ENV
from vaekit.training import fused, graphs, loop, steps
from vaekit.training.steps import StepOptions, make_optimizer, train_step

from conftest import digits_config, split_sizes, tiny_model

STEPS = -(-split_sizes(digits_config())["train"] // digits_config().train.batch_size)  # 21: 1294 digits in 64s


class Killed(Exception):
    """Stands in for the process dying: raised from inside the training loop."""


class KillAt(vaekit.Callback):
    """Interrupts training at (epoch, step); step counts from 0 as in ``on_step``."""

    def __init__(self, epoch: int, step: int) -> None:
        self.at = (epoch, step)

    def on_step(self, epoch: int, step: int) -> None:
        if (epoch, step) == self.at:
            raise Killed


@pytest.fixture
def static_on_cpu(monkeypatch):
    """Pretend the fast path is available on the CPU (the CUDA-graph step runs eagerly, uncaptured)."""
    monkeypatch.setattr(graphs, "fast_path_blocker", lambda device, world, enabled: None)


@pytest.fixture
def the_run(monkeypatch) -> dict:
    """{"run": the training.Run of the next vaekit.train call}, for callbacks that look at the model."""
    holder: dict = {}
    real_start = loop.start

    def start(*args):
        holder["run"] = real_start(*args)
        return holder["run"]

    monkeypatch.setattr(loop, "start", start)
    return holder


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k].cpu(), b[k].cpu()), k


def without_times(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time_s"} for r in json.loads(json.dumps(history))]


def metrics(directory: Path) -> list[dict]:
    return without_times([json.loads(s) for s in (directory / "metrics.jsonl").read_text().splitlines()])


def interrupted_then_resumed(cfg: vaekit.Config, directory: Path, epoch: int, step: int) -> vaekit.TrainResult:
    with pytest.raises(Killed):
        vaekit.train(cfg, directory, callbacks=[KillAt(epoch, step)])
    return vaekit.resume(directory)


# --- what a checkpoint holds -------------------------------------------------------------------------------


def test_every_epoch_checkpoint_holds_the_whole_training_state(tmp_path):
    cfg = digits_config(**{"train.epochs": 2})
    result = vaekit.train(cfg, tmp_path)
    pointer = json.loads((tmp_path / "latest.json").read_text())
    snapshot = tmp_path / "checkpoints" / pointer["checkpoint"]
    assert pointer["epoch"] == 2 and [p.name for p in (tmp_path / "checkpoints").iterdir()] == [snapshot.name]
    assert sorted(p.name for p in snapshot.iterdir()) == sorted(
        ["config.json", "model.safetensors", "training_state.json", "training_state.safetensors"])
    state = checkpoint.load_state(tmp_path)
    assert (state.epoch, state.step, state.finished, len(state.history)) == (2, 2 * STEPS, True, 2)
    n_params = len(list(result.model.parameters()))
    assert {f"optimizer.{i}.{k}" for i in range(n_params) for k in ("step", "exp_avg", "exp_avg_sq")} | {
        "rng.gen", "rng.cpu.0"} == set(state.tensors)
    assert state.tensors["rng.cpu.0"].dtype == torch.uint8
    for name in ("config.json", "model.safetensors"):  # published at the top for tools that read them by name
        assert (tmp_path / name).read_bytes() == (snapshot / name).read_bytes()
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".tmp")]
    assert_same_weights(vaekit.load(tmp_path).state_dict(), result.model.state_dict())


# --- exact continuation --------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [
    {},
    {"data.binarize": "dynamic", "train.kl_warmup_steps": 30, "train.beta": 2.0, "train.checkpoint_every": 2},
    {"train.early_stopping_patience": 5, "model.conditional": True, "train.objective": "iwae", "train.iw_k": 3},
], ids=["plain", "dynamic-warmup-every2", "early-stopping-conditional-iwae"])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, extra):
    cfg = digits_config(**{"train.epochs": 4, **extra})
    reference = vaekit.train(cfg, tmp_path / "ref")
    resumed = interrupted_then_resumed(cfg, tmp_path / "run", epoch=4, step=5)  # killed in the last epoch
    assert_same_weights(resumed.model.state_dict(), reference.model.state_dict())
    assert without_times(resumed.history) == without_times(reference.history)
    assert metrics(tmp_path / "run") == metrics(tmp_path / "ref")  # no duplicated or missing epoch
    assert_same_weights(vaekit.load(tmp_path / "run").state_dict(), reference.model.state_dict())


def test_resume_on_the_static_step_path(static_on_cpu, tmp_path):
    """The CUDA-graph step (eagerly on the CPU); beta != 1 after the warm-up must reach its device buffer."""
    cfg = digits_config(**{"train.epochs": 4, "train.drop_last": True, "data.binarize": "dynamic",
                           "train.beta": 2.0, "train.kl_warmup_steps": 30})
    reference = vaekit.train(cfg, tmp_path / "ref")
    resumed = interrupted_then_resumed(cfg, tmp_path / "run", epoch=3, step=7)
    assert_same_weights(resumed.model.state_dict(), reference.model.state_dict())
    assert metrics(tmp_path / "run") == metrics(tmp_path / "ref")


def test_extending_a_finished_run_equals_training_longer(tmp_path):
    reference = vaekit.train(digits_config(**{"train.epochs": 3}))
    vaekit.train(digits_config(**{"train.epochs": 2}), tmp_path)
    extended = vaekit.resume(tmp_path, {"train.epochs": 3})
    assert_same_weights(extended.model.state_dict(), reference.model.state_dict())
    assert [r["epoch"] for r in extended.history] == [1, 2, 3]
    assert vaekit.load_config(tmp_path).train.epochs == 3


def test_resuming_a_finished_run_trains_nothing(tmp_path):
    first = vaekit.train(digits_config(), tmp_path)
    weights = (tmp_path / "model.safetensors").read_bytes()
    again = vaekit.resume(tmp_path, {"train.epochs": 2, "data.dataset": "digits"})  # repeating values is fine
    assert (tmp_path / "model.safetensors").read_bytes() == weights
    assert without_times(again.history) == without_times(first.history)
    assert_same_weights(again.model.state_dict(), first.model.state_dict())


def test_resume_refuses_other_settings_naming_them(tmp_path):
    vaekit.train(digits_config(), tmp_path)
    with pytest.raises(ConfigError, match=r"model\.latent_dim = 8 \(the run has 4\).*train\.lr = 0\.01") as err:
        vaekit.resume(tmp_path, {"train.lr": 0.01, "model.latent_dim": 8})
    assert "train.epochs" in str(err.value)  # says what may change
    with pytest.raises(ConfigError, match="below the 2 epochs"):
        vaekit.resume(tmp_path, {"train.epochs": 1})
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.epoch'"):
        vaekit.resume(tmp_path, {"train.epoch": 3})


def test_resume_needs_a_run_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        vaekit.resume(tmp_path / "nowhere")
    checkpoint.save(tiny_model(), vaekit.Config(model=tiny_model().config), tmp_path / "plain")
    with pytest.raises(CheckpointError, match="holds no training state to resume from"):
        vaekit.resume(tmp_path / "plain")


def test_cli_resume(tmp_path, capsys):
    from vaekit.cli import main

    run = tmp_path / "run"
    small = ["--dataset", "digits", "--hidden", "32", "--latent-dim", "4", "--batch-size", "64", "--device", "cpu",
             "--quiet"]
    assert main(["train", *small, "--epochs", "1", "--out", str(run)]) == 0
    assert main(["train", *small, "--epochs", "1", "--out", str(run)]) == 2
    assert f"--resume {run}" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--lr", "0.5", "--quiet"]) == 2
    assert "train.lr = 0.5 (the run has 0.001)" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--overwrite"]) == 2
    assert main(["train", "--resume", str(run), *small, "--epochs", "2"]) == 0
    assert [json.loads(s)["epoch"] for s in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


# --- early stopping ------------------------------------------------------------------------------------------


class Snapshots(vaekit.Callback):
    def __init__(self, model_of) -> None:
        self.model_of, self.weights = model_of, {}

    def on_epoch_end(self, record):
        self.weights[record["epoch"]] = {k: v.clone() for k, v in self.model_of().state_dict().items()}


def test_early_stopping_keeps_the_best_weights(tmp_path, monkeypatch, the_run):
    vals = iter([5.0, 4.0, 4.5, 4.2, 3.0])  # best at epoch 2, then two epochs without improvement

    def scripted(model, x, batch_size=1000, y=None):
        return {"neg_elbo": next(vals), "recon": 0.0, "kl": 0.0}

    monkeypatch.setattr(objectives, "dataset_elbo", scripted)
    snaps = Snapshots(lambda: the_run["run"].model)
    result = vaekit.train(digits_config(**{"train.epochs": 5, "train.early_stopping_patience": 2}), tmp_path,
                          callbacks=[snaps])
    assert (result.best_epoch, result.stopped, len(result.history)) == (2, "early_stopping", 4)
    assert_same_weights(result.model.state_dict(), snaps.weights[2])
    assert_same_weights(vaekit.load(tmp_path).state_dict(), snaps.weights[2])  # the final checkpoint
    state = checkpoint.load_state(tmp_path)
    assert (state.best_epoch, state.stopped, state.finished) == (2, "early_stopping", True)
    assert_same_weights({k.removeprefix("last."): v for k, v in state.tensors.items() if k.startswith("last.")},
                        snaps.weights[4])  # an extension continues from the last weights


def test_early_stopping_needs_a_validation_split():
    with pytest.raises(TrainingError, match=r"no validation split \(data\.val_size = 0\.0\)"):
        vaekit.train(digits_config(**{"train.early_stopping_patience": 3, "data.val_size": 0}))


# --- numerical guards ----------------------------------------------------------------------------------------


def poison_elbo(monkeypatch, calls_to_poison: set[int]) -> None:
    """Make the training objective NaN at the given calls: its gradients are NaN too. Both ways of computing
    it are poisoned, autograd's and the fused CPU step's."""
    real, real_fused = objectives.elbo, fused.FusedELBO.__call__
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        terms = real(*args, **kwargs)
        if calls["n"] in calls_to_poison:
            return objectives.ELBOTerms(terms.loss * float("nan"), terms.recon, terms.kl)
        return terms

    def poisoned_fused(self, *args, **kwargs):
        calls["n"] += 1
        terms = real_fused(self, *args, **kwargs)
        if calls["n"] in calls_to_poison:
            for p in self.model.parameters():
                p.grad.mul_(float("nan"))
            return objectives.ELBOTerms(terms.loss * float("nan"), terms.recon, terms.kl)
        return terms

    monkeypatch.setattr(objectives, "elbo", poisoned)
    monkeypatch.setattr(fused.FusedELBO, "__call__", poisoned_fused)


def test_non_finite_stop_names_the_last_good_checkpoint(tmp_path, monkeypatch):
    poison_elbo(monkeypatch, {STEPS + 4})
    with pytest.raises(TrainingError, match=r"non-finite loss at epoch 2, step 4") as err:
        vaekit.train(digits_config(**{"train.epochs": 3}), tmp_path)
    assert f"last good checkpoint is {tmp_path} (epoch 1)" in str(err.value)
    assert f"--resume {tmp_path}" in str(err.value)
    assert checkpoint.load_state(tmp_path).epoch == 1


@pytest.mark.parametrize("static", [False, True])
def test_skip_mode_skips_non_finite_steps_up_to_the_limit(tmp_path, monkeypatch, static):
    if static:
        monkeypatch.setattr(graphs, "fast_path_blocker", lambda device, world, enabled: None)
    poison_elbo(monkeypatch, {3, STEPS + 10})
    cfg = digits_config(**{"train.epochs": 3, "train.nonfinite": "skip", "train.max_skipped_steps": 2})
    result = vaekit.train(cfg, tmp_path)
    assert result.skipped_steps == 2
    assert [r["train_skipped_steps"] for r in result.history] == [1, 1, 0]
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    assert checkpoint.load_state(tmp_path).skipped_steps == 2
    poison_elbo(monkeypatch, {3, 5, 7})
    with pytest.raises(TrainingError, match=r"3 steps .* by the end of epoch 1, more than "
                                            r"train\.max_skipped_steps = 2"):
        vaekit.train(cfg)


def test_a_skipped_step_leaves_weights_and_adam_untouched():
    model = tiny_model(shape=(1, 8, 8), latent=4, hidden=(32,))
    opt = make_optimizer(model, 1e-2)
    x = torch.rand(16, 1, 8, 8)
    train_step(model, opt, x, 1.0, options=StepOptions(skip_nonfinite=True))  # a good step: Adam has state now
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adam = {i: {k: v.clone() for k, v in s.items()} for i, s in opt.state_dict()["state"].items()}
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    terms = train_step(model, opt, bad, 1.0, options=StepOptions(skip_nonfinite=True))
    assert torch.isnan(terms).all()
    assert_same_weights(model.state_dict(), before)
    for i, s in opt.state_dict()["state"].items():
        assert_same_weights(s, adam[i])
    assert float(opt.state_dict()["state"][0]["step"]) == 1.0
    assert not hasattr(opt, "found_inf")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_one_non_finite_gradient_element_cancels_the_step_when_the_loss_is_finite(bad):
    model = tiny_model(shape=(1, 8, 8), latent=4, hidden=(32,))
    opt = make_optimizer(model, 1e-2)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    loss = torch.tensor(1.0)
    assert bool(steps._cancel_if_nonfinite(opt, loss)) and float(opt.found_inf) == 0.0
    weight = max(model.parameters(), key=lambda p: p.numel())
    weight.grad.view(-1)[weight.numel() // 2] = bad  # one element, in the middle of the largest gradient
    assert not bool(steps._cancel_if_nonfinite(opt, loss)) and float(opt.found_inf) == 1.0


def test_a_non_finite_last_gradient_stops_training(tmp_path, the_run):
    class SpoilLastStep(vaekit.Callback):
        def on_step(self, epoch, step):
            if (epoch, step) == (2, STEPS - 1):  # as if the last update of epoch 2 had a NaN gradient
                with torch.no_grad():
                    next(the_run["run"].model.parameters()).fill_(float("nan"))

    with pytest.raises(TrainingError, match=rf"non-finite gradient at epoch 2, step {STEPS}.*\(epoch 1\)"):
        vaekit.train(digits_config(**{"train.epochs": 3}), tmp_path, callbacks=[SpoilLastStep()])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian-learned"])
def test_training_on_digits_never_produces_nan(precision, likelihood):
    """Bounded log-variances and likelihood scales keep every step finite, even at a high learning rate."""
    cfg = digits_config(**{"train.epochs": 3, "train.precision": precision, "model.likelihood": likelihood,
                           "train.lr": 1e-2})
    result = vaekit.train(cfg)  # train.nonfinite = "stop": a single non-finite step would raise
    for r in result.history:
        assert all(torch.isfinite(torch.tensor(r[k])) for k in ("train_loss", "val_neg_elbo"))
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


# --- the kill test -------------------------------------------------------------------------------------------


TRAIN = ["train", "--dataset", "digits", "--epochs", "4", "--hidden", "32", "--latent-dim", "4", "--batch-size",
         "64", "--binarize", "dynamic", "--kl-warmup-epochs", "1", "--device", "cpu", "--quiet"]
# (where the process is killed, the epoch of the checkpoint that must survive it)
KILLS = [
    ("step:30", 1),  # mid-epoch 2
    ("checkpoint-file:3", 1),  # between two files of the epoch-2 checkpoint
    ("atomic-replace:2", 1),  # between writing latest.json's temporary file and renaming it
    ("checkpoint-after-switch:2", 3),  # epoch 3 switched to, its model files not yet published at the top
    ("checkpoint-before-switch:1", 3),  # epoch 4 complete on disk, but not yet current
]


def vaekit_cli(args: list[str], kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    env["OMP_NUM_THREADS"] = "1"  # every process computes the same way
    if kill_at is not None:
        env[KILL_ENV] = kill_at
    return subprocess.run([sys.executable, "-m", "vaekit", *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.slow
def test_killed_training_resumes_to_bitwise_the_same_weights(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert vaekit_cli([*TRAIN, "--out", str(ref)]).returncode == 0
    for i, (kill_at, survivor) in enumerate(KILLS):
        args = [*TRAIN, "--out", str(run)] if i == 0 else ["train", "--resume", str(run), "--quiet"]
        proc = vaekit_cli(args, kill_at)
        assert proc.returncode == -9, (kill_at, proc.returncode, proc.stderr[-2000:])
        assert checkpoint.load_state(run).epoch == survivor, kill_at  # the previous checkpoint, intact
        vaekit.load(run)
        load_file(run / "model.safetensors")  # never a half-written file under a final name
        json.loads((run / "config.json").read_text())
    proc = vaekit_cli(["train", "--resume", str(run), "--quiet"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_same_weights(load_file(run / "model.safetensors"), load_file(ref / "model.safetensors"))
    assert metrics(run) == metrics(ref)
    assert [p.name for p in (run / "checkpoints").iterdir()] == [json.loads((run / "latest.json").read_text())[
        "checkpoint"]]


# --- several processes ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_worker(rank: int, world: int, port: int, out: str, epochs: int, resume: bool) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cfg = digits_config(**{"train.epochs": epochs, "data.binarize": "dynamic", "train.lr": 3e-3})
    result = vaekit.resume(out, {"train.epochs": epochs}) if resume else vaekit.train(cfg, out)
    save_file({k: v.contiguous() for k, v in result.model.state_dict().items()}, f"{out}-rank{rank}.safetensors")


@pytest.mark.slow
def test_two_processes_resume_exactly(tmp_path):
    """Under torchrun every process's own RNG state is saved and restored, so a resumed run is the same run."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    mp.spawn(ddp_worker, args=(2, free_port(), a, 2, False), nprocs=2, join=True)
    mp.spawn(ddp_worker, args=(2, free_port(), b, 1, False), nprocs=2, join=True)
    mp.spawn(ddp_worker, args=(2, free_port(), b, 2, True), nprocs=2, join=True)  # extended by one epoch
    state = checkpoint.load_state(b)
    assert state.world_size == 2 and {"rng.cpu.0", "rng.cpu.1"} <= set(state.tensors)
    for rank in (0, 1):
        assert_same_weights(load_file(f"{b}-rank{rank}.safetensors"), load_file(f"{a}-rank0.safetensors"))
    assert metrics(Path(b)) == metrics(Path(a))


def test_resuming_a_run_that_never_completed_a_checkpoint_says_so_and_how_to_restart(tmp_path, capsys):
    from vaekit.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")  # what a run killed during its first epoch leaves behind
    with pytest.raises(CheckpointError, match=r"holds no completed checkpoint .* without --resume"):
        vaekit.resume(run)
    assert main(["train", "--resume", str(run)]) == 2
    assert "holds no completed checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_sigterm_stops_training_saying_where_the_last_checkpoint_is(tmp_path):
    """A scheduler's or container's SIGTERM unwinds like Ctrl-C: exit 143, the last checkpoint named, resumable."""
    import signal
    import time

    from vaekit.cli.train import _where_to_resume

    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "vaekit", *TRAIN[:4], "100000", *TRAIN[5:], "--out", str(run)],
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not (run / "latest.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    epoch = checkpoint.load_state(run).epoch
    assert f"the last checkpoint is epoch {epoch} in {run}; continue with `vaekit train --resume {run}`" in err
    assert err.rstrip().endswith("vaekit: terminated (SIGTERM)") and "Traceback" not in err
    resumed = vaekit_cli(["train", "--resume", str(run), "--epochs", str(epoch + 1), "--quiet"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "no checkpoint of this run was completed" in _where_to_resume(tmp_path / "never")


def test_one_writer_per_run_while_readers_race_it(tmp_path, capsys):
    """A trainer checkpointing every epoch in its own process: 200 loads racing it each get one whole checkpoint,
    a second writer (a resume, or a fresh run onto the same --out) is refused naming the trainer's PID, and once
    the trainer is killed the kernel has released its lock, so the run resumes."""
    import time

    from vaekit.cli import main

    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "vaekit", *TRAIN[:4], "100000", *TRAIN[5:], "--out", str(run)],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (run / "latest.json").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        seen = set()
        for _ in range(200):
            seen.add(checkpoint.resolve(run).checkpoint_id)
            _, config = checkpoint.load_run(run)  # raises if its files came from two checkpoints
            assert config.train.epochs == 100000 and checkpoint.load_state(run).epoch >= 1
        assert len(seen) >= 3, seen  # the trainer really replaced the checkpoint while the loads ran
        lines = len((run / "metrics.jsonl").read_text().splitlines())
        with pytest.raises(TrainingError, match=rf"{run} is being written by another training process "
                                                rf"\(PID {proc.pid} on {socket.gethostname()}\)"):
            vaekit.resume(run)
        assert main([*TRAIN, "--out", str(run), "--overwrite"]) == 2
        assert f"PID {proc.pid}" in capsys.readouterr().err
        assert len((run / "metrics.jsonl").read_text().splitlines()) >= lines  # not truncated by the refused one
    finally:
        proc.kill()
        proc.wait(timeout=60)
    epoch = checkpoint.load_state(run).epoch
    result = vaekit.resume(run, {"train.epochs": epoch})  # SIGKILL left the lock to the kernel to release
    assert result.history[-1]["epoch"] == epoch
