"""hf://owner/name[@revision] ids, resolved offline from a local cache laid out as huggingface_hub lays it out
(blobs named by their hash, snapshots/<commit>/ of relative links to them, refs/<branch or tag> -> commit)."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import sys

import pytest
import torch

import vaekit
from vaekit import hub
from vaekit.cli import main
from vaekit.errors import CheckpointError

from conftest import digits_config

hf = pytest.importorskip("huggingface_hub", reason="the hub extra is not installed")
constants = pytest.importorskip("huggingface_hub.constants")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("hub") / "run"
    vaekit.train(digits_config(**{"train.epochs": 1}), out)
    return out


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty Hub cache, used offline: nothing in these tests may reach the network."""
    root = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return root


def cached(cache, repo_id: str, folder, refs=("main",), wanted=hub.PATTERNS, prefix: str = ""):
    """Put the files of ``folder`` that ``wanted`` matches into ``cache`` as one commit of ``repo_id``."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / COMMIT
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = prefix + path.relative_to(folder).as_posix()
        if not any(fnmatch.fnmatch(rel, p) for p in wanted):
            continue
        blob = path.read_bytes()
        (repo / "blobs").mkdir(parents=True, exist_ok=True)
        target = repo / "blobs" / hashlib.sha256(blob).hexdigest()
        target.write_bytes(blob)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(target, link.parent), link)
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(COMMIT)
    return snap


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_hub_id_loads_the_run_uploaded_as_is(run, cache):
    snap = cached(cache, "someone/digits-vae", run, refs=("main", "v1"))
    assert not list(snap.rglob("training_state.safetensors"))  # the optimizer state stays on the Hub
    for rev in ("", "@v1", f"@{COMMIT}"):
        assert same_weights(vaekit.load(f"hf://someone/digits-vae{rev}"), vaekit.load(run))
    assert hub.snapshot("hf://someone/digits-vae") == snap


def test_a_model_in_a_folder_of_the_repository(run, cache):
    cached(cache, "someone/zoo", run, wanted=[f"models/a/{p}" for p in hub.PATTERNS], prefix="models/a/")
    assert same_weights(vaekit.load("hf://someone/zoo@main/models/a"), vaekit.load(run))
    with pytest.raises(CheckpointError, match="no folder 'models/b'"):
        vaekit.load("hf://someone/zoo/models/b")


def test_commands_take_a_hub_id(run, cache, tmp_path, capsys):
    cached(cache, "someone/digits-vae", run)
    out = tmp_path / "s.png"
    assert main(["sample", "hf://someone/digits-vae", "-n", "4", "-o", str(out)]) == 0 and out.stat().st_size
    assert main(["evaluate", "hf://someone/digits-vae", "--limit", "20", "--iw-samples", "5", "--json"]) == 0
    assert '"n": 20' in capsys.readouterr().out
    assert main(["plot", "hf://someone/digits-vae", "-o", str(tmp_path / "c.png")]) == 0  # metrics.jsonl came too
    scores = tmp_path / "scores.csv"
    assert main(["anomaly", "hf://someone/digits-vae", "--score", "recon", "-o", str(scores)]) == 0
    assert len(scores.read_text().splitlines()) > 100


def test_nothing_is_written_into_the_cache(run, cache, capsys, tmp_path, monkeypatch):
    snap = cached(cache, "someone/digits-vae", run)
    before = sorted(p.name for p in snap.iterdir())
    assert main(["anomaly", "hf://someone/digits-vae", "--contamination", "0.05"]) == 2
    err = capsys.readouterr().err
    assert "anomaly.json is not written there" in err and "hf download" in err and "Traceback" not in err
    assert main(["card", str(snap), "--no-evaluate"]) == 2
    assert "README.md is not written there" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    assert main(["plot", "hf://someone/digits-vae"]) == 0 and (tmp_path / "curves.png").is_file()
    assert sorted(p.name for p in snap.iterdir()) == before


def test_refusals_name_what_is_wrong(run, cache, capsys, monkeypatch):
    with pytest.raises(CheckpointError, match=r"not \(completely\) in the local Hugging Face cache"):
        vaekit.load("hf://someone/absent")
    with pytest.raises(CheckpointError, match="namespace/name"):
        vaekit.load("hf://just-a-name")
    with pytest.raises(CheckpointError, match="inside the repository"):
        vaekit.load("hf://someone/digits-vae@main/../../elsewhere")
    with pytest.raises(CheckpointError, match="dataset repository"):
        vaekit.load("hf://datasets/someone/data")
    assert main(["sample", "hf://someone/absent", "-o", "x.png"]) == 2
    assert "vaekit: error: hf://someone/absent is not" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(CheckpointError, match=r"pip install 'vaekit\[hub\]'"):
        vaekit.load("hf://someone/digits-vae")


def test_pickles_in_a_repository_are_never_loaded(run, cache, tmp_path):
    repo = tmp_path / "pickled"
    repo.mkdir()
    (repo / "config.json").write_bytes((run / "config.json").read_bytes())
    (repo / "model.pt").write_bytes(b"\x80\x04 not to be unpickled")
    cached(cache, "someone/pickled", repo, wanted=[*hub.PATTERNS, "*.pt"])
    with pytest.raises(CheckpointError, match="never loads pickle files"):
        vaekit.load("hf://someone/pickled")
