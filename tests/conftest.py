from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest
import torch
from torch.distributions import MultivariateNormal

from vaekit import VAE, Config

REPO = Path(__file__).resolve().parents[1]
# README: "tests needing MNIST use $VAEKIT_DATA" (a directory holding mnist/ and fashion-mnist/). Read once, here,
# before the autouse fixture below hides it from every test that does not ask for the data.
DATA_ENV = "VAEKIT_DATA"
SHARED_DATA = Path(os.environ[DATA_ENV]).resolve() if os.environ.get(DATA_ENV) else None
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", ""}


class NetworkBlocked(ConnectionRefusedError):
    """What a test that tries to reach beyond this machine gets instead of a connection."""


def _is_local(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if not isinstance(host, str) or host.lower() in LOCAL_HOSTS:
        return True
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False  # a name other than localhost would be looked up by DNS: the network
    return address.is_loopback or address.is_unspecified


def _blocked(what: str, address: object) -> NetworkBlocked:
    return NetworkBlocked(f"tests must not reach the network: {what} {address!r} (tests/conftest.py)")


def _guard_sockets(monkeypatch) -> None:
    """Loopback and Unix sockets work (servers under test, event loops); any other address is refused."""
    real_connect, real_connect_ex, real_sendto = socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto
    real_getaddrinfo = socket.getaddrinfo

    def inet(sock: socket.socket, address: object) -> bool:
        return sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple)

    def connect(self, address):
        if inet(self, address) and not _is_local(address[0]):
            raise _blocked("connect to", address)
        return real_connect(self, address)

    def connect_ex(self, address):
        if inet(self, address) and not _is_local(address[0]):
            raise _blocked("connect to", address)
        return real_connect_ex(self, address)

    def sendto(self, data, *args):
        address = args[-1]
        if inet(self, address) and not _is_local(address[0]):
            raise _blocked("send to", address)
        return real_sendto(self, data, *args)

    def getaddrinfo(host, *args, **kwargs):
        if not _is_local(host):
            raise _blocked("look up", host)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket.socket, "sendto", sendto)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path):
    """No test reads the user's cache or environment (VAEKIT_DATA included: tests that need the data take the
    ``shared_data`` fixture), and none can reach the network: sockets to anything but loopback are refused.

    A MonkeyPatch of its own, so that a test's ``monkeypatch.undo()`` undoes only what that test patched."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VAEKIT_CACHE", str(tmp_path / "cache"))
        mp.delenv(DATA_ENV, raising=False)
        _guard_sockets(mp)
        torch.manual_seed(0)
        yield


@pytest.fixture
def shared_data() -> Path:
    """The directory $VAEKIT_DATA names (holding mnist/); the test is skipped, saying why, without it."""
    if SHARED_DATA is None:
        pytest.skip(f"${DATA_ENV} is not set: it names the directory holding mnist/ (CI sets it)")
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.skip(f"MNIST reference data not present at ${DATA_ENV}/mnist = {SHARED_DATA / 'mnist'}")
    return SHARED_DATA


def tiny_model(likelihood: str = "bernoulli", shape=(1, 4, 4), latent: int = 3, hidden=(16,)) -> VAE:
    cfg = Config().override({"model.data_shape": list(shape), "model.likelihood": likelihood,
                             "model.latent_dim": latent, "model.hidden": list(hidden)})
    return VAE(cfg.model)


def linear_gaussian_vae(exact_posterior: bool):
    """x = W z + b + sigma * noise with orthogonal W: log p(x) and the (diagonal) posterior are known."""
    d, latent, sigma = 6, 3, 0.5
    cfg = Config().override({"model.data_shape": [d], "model.latent_dim": latent, "model.hidden": [],
                             "model.likelihood": "gaussian", "model.obs_std": sigma})
    model = VAE(cfg.model)
    q, _ = torch.linalg.qr(torch.randn(d, latent))
    s = torch.tensor([2.0, 1.0, 0.5])
    w, b = q * s, torch.randn(d)
    post_var = 1 / (1 + s**2 / sigma**2)  # diagonal because W has orthogonal columns
    with torch.no_grad():
        dec = model.decoder[0]
        dec.weight.copy_(w)
        dec.bias.copy_(b)
        enc = model.encoder[0]
        enc.weight.zero_()
        enc.weight[:latent] = (post_var[:, None] * w.T) / sigma**2  # posterior mean = A (x - b)
        enc.bias[:latent] = -(enc.weight[:latent] @ b)
        enc.bias[latent:] = post_var.log()
        if not exact_posterior:
            enc.bias[latent:] += 1.0
            enc.weight[:latent] *= 0.7
    marginal = MultivariateNormal(b, w @ w.T + sigma**2 * torch.eye(d))
    return model, marginal


def digits_config(**overrides) -> Config:
    """A small model on digits, on the CPU, in float32 (``auto`` would take bfloat16 products on some CPUs and
    not others; tests of bf16 and auto ask for them)."""
    base = {"data.dataset": "digits", "train.epochs": 2, "train.batch_size": 64, "model.hidden": [32],
            "model.latent_dim": 4, "train.device": "cpu", "train.precision": "fp32"}
    base.update(overrides)
    return Config().override(base)


def split_sizes(config: Config) -> dict[str, int]:
    """How many examples each split of ``config``'s data holds, from the data and the split settings (so that a
    test does not hard-code 1294/144/359 for digits)."""
    from vaekit import data

    splits = data.load(config.data)
    return {"train": len(splits.train), "val": 0 if splits.val is None else len(splits.val), "test": len(splits.test)}
