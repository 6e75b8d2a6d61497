"""vaekit card: the model card states the run's own config and the numbers `vaekit evaluate` gives."""

from __future__ import annotations

import json
import re

import pytest

import vaekit
from vaekit import card
from vaekit.cli import main
from vaekit.config import Config

from conftest import digits_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("card") / "run"
    vaekit.train(digits_config(**{"train.epochs": 2, "model.lower_latent_dims": [2]}), out)
    return out


def test_card_holds_the_config_and_the_evaluation(run, capsys):
    assert main(["card", str(run), "--iw-samples", "20", "--limit", "50", "--repo-id", "me/digits"]) == 0
    assert "hf upload me/digits" in capsys.readouterr().out
    text = (run / "README.md").read_text()
    assert text.startswith("---\nlibrary_name: vaekit\n") and "- hierarchical-vae\n" in text
    block = re.search(r"```json\n(.*?)\n```", text, re.S).group(1)
    assert Config.from_dict(json.loads(block)) == vaekit.load_config(run)  # the card's config is the run's
    want = vaekit.evaluate(run, iw_samples=20, limit=50)  # seeded: the same numbers again
    assert f"| negative ELBO | {want['neg_elbo']:.3f} nats |" in text
    assert f"| NLL (K = 20) | {want['nll']:.3f} nats |" in text and "n = 50" in text
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert f"| last training -ELBO | {last['train_neg_elbo']:.3f} nats |" in text
    assert "![Samples from the prior](samples.png)" in text and (run / "samples.png").stat().st_size > 0
    assert 'vaekit.load("hf://me/digits")' in text
    for row in (line for line in text.splitlines() if line.startswith("| ")):  # p(x|z) must not split a cell
        assert len(re.findall(r"(?<!\\)\|", row)) == 3, row


def test_card_without_evaluation_needs_no_data(run, monkeypatch):
    monkeypatch.setattr(vaekit.evaluation, "evaluate", lambda *a, **k: pytest.fail("evaluated"))
    assert main(["card", str(run), "--no-evaluate"]) == 0
    text = (run / "README.md").read_text()
    assert "Not evaluated" in text and "OWNER/NAME" in text and "NLL (K" not in text


def test_card_of_a_directory_without_a_model(tmp_path, capsys):
    assert main(["card", str(tmp_path), "--no-evaluate"]) == 2
    assert "vaekit: error:" in capsys.readouterr().err and not (tmp_path / card.CARD_FILE).exists()
