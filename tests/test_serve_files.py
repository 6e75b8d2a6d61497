"""vaekit serve never reads or writes files named by a request (README, "Serving a model").

Requests whose string fields name existing files are sent to a real app (FastAPI's TestClient): labels that are
paths (to a model whose class names *are* those paths, so the labels are valid), inputs given as paths or file
URLs, and PNG uploads whose file names are paths of other, existing images. While each request is handled, an
audit hook (``sys.addaudithook``) records every file the process opens, creates, removes, renames or lists, and
every process it starts: none may name a planted file, nothing may be written, and the planted files and the
working directory are unchanged afterwards. The answers themselves come from the bytes sent, not from the files
their names point to.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vaekit

pytest.importorskip("fastapi", reason="vaekit serve needs FastAPI: pip install -e '.[dev]'")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx: pip install -e '.[dev]'")

from fastapi.testclient import TestClient

from vaekit.serve import create_app

from conftest import digits_config

SHAPE = (1, 8, 8)
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# audit events that touch the file system or start processes (https://docs.python.org/3/library/audit_events.html)
FILE_EVENTS = {"open", "os.listdir", "os.scandir", "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.truncate",
               "os.chmod", "os.chown", "os.utime", "os.link", "os.symlink", "os.chdir", "shutil.copyfile",
               "shutil.copymode", "shutil.copystat", "shutil.copytree", "shutil.move", "shutil.rmtree",
               "shutil.make_archive", "shutil.unpack_archive", "glob.glob", "glob.glob/2", "pathlib.Path.glob",
               "pathlib.Path.rglob", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.fork",
               "os.forkpty", "subprocess.Popen", "tempfile.mkstemp", "tempfile.mkdtemp"}
WRITING_EVENTS = FILE_EVENTS - {"open", "os.listdir", "os.scandir", "glob.glob", "glob.glob/2", "pathlib.Path.glob",
                                "pathlib.Path.rglob"}


class FileAudit:
    """Records file-system and process events while ``recording`` (one hook for the session: hooks stay)."""

    def __init__(self) -> None:
        self.recording = False
        self.events: list[tuple[str, tuple]] = []

    def __call__(self, event: str, args: tuple) -> None:
        if self.recording and event in FILE_EVENTS:
            self.events.append((event, args))

    def __enter__(self) -> FileAudit:
        self.events = []
        self.recording = True
        return self

    def __exit__(self, *exc) -> None:
        self.recording = False


AUDIT = FileAudit()
sys.addaudithook(AUDIT)


def named_paths(args: tuple) -> list[str]:
    """The paths an event's arguments name, as strings (file descriptors and None are not paths)."""
    out = []
    for a in args:
        if isinstance(a, (str, bytes, os.PathLike)):
            p = os.fsdecode(a)
            out.append(p)
    return out


def is_write(event: str, args: tuple) -> bool:
    if event in WRITING_EVENTS:
        return True
    if event == "open":  # builtins/io.open: (path, mode, flags); os.open: (path, None, flags)
        mode, flags = args[1], args[2]
        return bool(mode and any(c in mode for c in "wax+")) or bool(isinstance(flags, int) and flags & WRITE_FLAGS)
    return False


def png_bytes(a: np.ndarray) -> bytes:
    """A (1, H, W) array in [0, 1] as PNG bytes."""
    out = io.BytesIO()
    Image.fromarray(np.rint(a[0] * 255).astype(np.uint8), "L").save(out, format="PNG")
    return out.getvalue()


def on_grid(seed: int) -> np.ndarray:
    """An input on the 8-bit grid k/255, so a PNG carries it exactly."""
    return np.random.default_rng(seed).integers(0, 256, SHAPE) / 255.0


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict[str, Path]:
    """Existing files that requests name: text, an image unlike any sent, an array, and a name not yet taken."""
    root = tmp_path_factory.mktemp("planted")
    (root / "secret.txt").write_text("the server must not read this\n")
    (root / "image.png").write_bytes(png_bytes(np.ones(SHAPE)))  # all white: nothing sent looks like it
    np.save(root / "array.npy", np.full((1, *SHAPE), 0.5, np.float32))
    return {"secret": root / "secret.txt", "image": root / "image.png", "array": root / "array.npy",
            "new": root / "written-by-the-server.txt", "dir": root}


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def client(tmp_path_factory, planted):
    """A conditional model whose class names are paths of the planted files (and a traversal), so that a label
    naming a file is a valid request."""
    root = tmp_path_factory.mktemp("pathlabels")
    digits = vaekit.load_data(digits_config().data).train
    classes = np.array([str(planted["secret"]), str(planted["image"]), str(planted["array"]), "../../etc/passwd"])
    np.savez(root / "images.npz", x=digits.x[:256].numpy(), y=(digits.y[:256] % len(classes)).numpy(),
             classes=classes)
    run = root / "run"
    torch.manual_seed(0)
    vaekit.train(digits_config(**{"data.dataset": str(root / "images.npz"), "model.conditional": True,
                                  "train.epochs": 1, "data.val_size": 0}), run)
    assert vaekit.load_config(run).model.labels == tuple(classes)
    with TestClient(create_app(run, n_examples=8)) as c:
        yield c


def audited(client: TestClient, planted: dict[str, Path], method: str, url: str, **kwargs):
    """The response to one request, after checking what the process did with files while handling it."""
    with AUDIT:
        response = client.request(method, url, **kwargs)
    touched = [(e, p) for e, args in AUDIT.events for p in named_paths(args) if str(planted["dir"]) in p
               or p.endswith(("secret.txt", "image.png", "array.npy", "passwd"))]
    assert not touched, f"{url} touched files named by the request: {touched}"
    writes = [(e, args) for e, args in AUDIT.events if is_write(e, args)]
    assert not writes, f"{url} wrote to the file system or started a process: {writes}"
    assert response.status_code < 500, response.text
    return response


def test_the_audit_sees_what_the_server_would_do(planted):
    """The hook is live: a read of a planted file and a write are both recorded (else the test proves nothing)."""
    with AUDIT:
        planted["secret"].read_text()
        Image.open(planted["image"]).close()
        np.load(planted["array"])
    seen = {p for _, args in AUDIT.events for p in named_paths(args)}
    assert {str(planted["secret"]), str(planted["image"]), str(planted["array"])} <= seen
    with AUDIT:
        planted["new"].write_text("x")
    assert any(is_write(e, a) for e, a in AUDIT.events)
    planted["new"].unlink()


def test_requests_naming_files_neither_read_nor_write_them(client, planted, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before, cwd_before = digests(planted["dir"]), sorted(os.listdir(tmp_path))
    info = audited(client, planted, "GET", "/v1/info", params={"path": str(planted["secret"])}).json()
    labels = info["labels"]
    assert labels[0] == str(planted["secret"])
    x = on_grid(1)
    for label in labels:  # valid labels that are paths: answered from the model, for that class
        sample = audited(client, planted, "POST", "/v1/sample", json={"n": 2, "seed": 3, "label": label})
        assert sample.status_code == 200 and np.asarray(sample.json()["x"]).shape == (2, *SHAPE)
        enc = audited(client, planted, "POST", "/v1/encode", json={"x": [x.tolist()], "label": label})
        assert enc.status_code == 200 and len(enc.json()["mu"][0]) == info["latent_dim"]
    unknown = [str(planted["new"]), "/etc/passwd", f"file://{planted['secret']}", str(planted["dir"])]
    for label in unknown:  # paths that are not labels: refused by name, nothing read or created
        r = audited(client, planted, "POST", "/v1/sample", json={"n": 1, "label": label})
        assert r.status_code == 422 and "unknown label" in r.text
    for given in (str(planted["image"]), f"file://{planted['image']}", str(planted["array"]), "../" * 8 + "etc/passwd"):
        r = audited(client, planted, "POST", "/v1/encode", json={"x": [given], "label": labels[0]})
        assert 400 <= r.status_code < 500
    assert digests(planted["dir"]) == before and not planted["new"].exists()
    assert sorted(os.listdir(tmp_path)) == cwd_before


def test_uploads_are_read_from_the_request_not_from_the_files_their_names_name(client, planted):
    """A PNG uploaded under the name (and path) of another, existing image is the bytes sent: its code is that
    of the same input sent as an array, not that of the planted image."""
    labels = client.get("/v1/info").json()["labels"]
    x = np.stack([on_grid(2), on_grid(3)])
    as_array = client.post("/v1/encode", json={"x": x.tolist(), "label": labels[1]}).json()["mu"]
    planted_code = client.post("/v1/encode", json={"x": [np.ones(SHAPE).tolist()], "label": labels[1]}).json()["mu"]
    names = [str(planted["image"]), "../" * 8 + str(planted["image"]).lstrip("/")]
    files = [("files", (name, png_bytes(x[i]), "image/png")) for i, name in enumerate(names)]
    r = audited(client, planted, "POST", "/v1/encode/upload", files=files, data={"label": labels[1]})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["mu"], as_array, atol=1e-5)
    assert not np.allclose(r.json()["mu"][0], planted_code[0], atol=1e-3)
    r = audited(client, planted, "POST", "/v1/encode/upload", data={"label": labels[1]},
                files=[("files", (str(planted["secret"]), planted["secret"].read_bytes(), "image/png"))])
    assert r.status_code == 422  # the bytes sent are text, whatever the name: not a PNG
