"""Model cards: a README.md for a run directory, so that the directory can be uploaded to the Hugging Face Hub
as it is and read there by people (what the model is, how it was trained and evaluated, pictures, how to use it)
and by ``vaekit`` (``hf://owner/name``).

The card is built from what the run holds (config, metrics.jsonl, images) and, when given, the result of
``evaluation.evaluate``: every number in it comes with the protocol that produced it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from vaekit import __version__, checkpoint, generate, hub, plots
from vaekit.config import Config
from vaekit.fileio import atomic_write_bytes
from vaekit.model import VAE
from vaekit.training.records import read_metrics

CARD_FILE = "README.md"
IMAGES = (("samples.png", "Samples from the prior"), ("reconstructions.png", "Test inputs (top) and their "
          "reconstructions (bottom)"), ("curves.png", "Training curves (`vaekit plot`)"))


def write_card(directory: str | Path, evaluation: dict[str, Any] | None = None, repo_id: str | None = None) -> Path:
    """Write ``directory/README.md``: the card of the run's current model; returns its path.

    ``evaluation`` is a result of ``vaekit.evaluate`` (its numbers and protocol go into the card);
    ``repo_id`` (``owner/name``) fills the usage lines, which otherwise name a placeholder.
    """
    directory = Path(directory)
    hub.refuse_write(directory, CARD_FILE)
    model, config = checkpoint.load_run(directory)
    history = read_metrics(directory / "metrics.jsonl") if (directory / "metrics.jsonl").is_file() else []
    if plots.is_image_shape(model.data_shape) and not (directory / "samples.png").is_file():
        _write_samples(model, directory / "samples.png")
    path = directory / CARD_FILE
    atomic_write_bytes(path, model_card(model, config, history, evaluation, repo_id, directory).encode())
    return path


def _write_samples(model: VAE, path: Path) -> None:
    """A grid of samples (one row per class for a conditional model), seeded: the same card each time."""
    if model.config.conditional:
        plots.save_grid(generate.sample_per_label(model, 8), path, nrow=8)
    else:
        plots.save_grid(generate.sample(model, 64), path, nrow=8)


def model_card(model: VAE, config: Config, history: list[dict], evaluation: dict[str, Any] | None = None,
               repo_id: str | None = None, directory: Path | None = None) -> str:
    """The card's Markdown text (with the Hub's YAML header); ``directory`` is searched for the images."""
    name = repo_id.split("/")[-1] if repo_id else (directory.resolve().name if directory else "vaekit model")
    images = [(f, alt) for f, alt in IMAGES if directory is not None and (directory / f).is_file()]
    sections = [_header(config), f"# {name}\n\n{_summary(config)}", _model_table(model, config),
                _training(config, history), _evaluation(evaluation), _pictures(images),
                _usage(repo_id or "OWNER/NAME", model), _files(), _config_block(config)]
    return "\n\n".join(s for s in sections if s) + "\n"


def _header(config: Config) -> str:
    tags = ["vaekit", "variational-autoencoder", "pytorch", config.model.arch]
    if config.model.lower_latent_dims or config.model.latent_channels:
        tags.append("hierarchical-vae")
    if config.model.conditional:
        tags.append("conditional-vae")
    return "---\nlibrary_name: vaekit\ntags:\n" + "".join(f"- {t}\n" for t in tags) + "---"


def _summary(config: Config) -> str:
    m = config.model
    layers = "one stochastic layer" if m.n_layers == 1 else f"{m.n_layers} stochastic layers"
    cond = f", conditioned on {len(m.labels or ())} classes" if m.conditional else ""
    return (f"A variational autoencoder ({layers}{cond}) trained with vaekit "
            f"{__version__} on `{config.data.dataset}`: {m.likelihood} p(x|z), {m.posterior} q(z|x), "
            f"{m.prior} p(z). Loading it reads JSON and safetensors only: no code in this repository runs.")


def _model_table(model: VAE, config: Config) -> str:
    m = config.model
    net = f"conv, channels {list(m.channels)}, then {list(m.hidden)}" if m.arch == "conv" else f"MLP {list(m.hidden)}"
    latents = [m.latent_dim, *m.lower_latent_dims]
    if m.latent_channels:
        latents.append(f"{m.latent_channels}-channel map at half the image size")
    rows = [("data shape", list(model.data_shape)), ("networks", net), ("activation", m.activation),
            ("latent layers (top first)", ", ".join(map(str, latents))), ("likelihood p(x|z)", m.likelihood),
            ("posterior q(z|x)", m.posterior + (f" ({m.flow_steps} flow steps)" if m.posterior == "iaf" else "")),
            ("prior p(z)", m.prior + (f" ({m.prior_components} components)" if m.prior != "standard-normal" else "")),
            ("parameters", f"{sum(p.numel() for p in model.parameters()):,}")]
    if m.conditional:
        rows.append(("classes", ", ".join(m.labels or ())))
    return "## Model\n\n" + _table(("", ""), rows)


def _training(config: Config, history: list[dict]) -> str:
    t = config.train
    text = (f"## Training\n\n`{config.data.dataset}` (binarization {config.data.binarize}), objective {t.objective}"
            f"{f' (K = {t.iw_k})' if t.objective == 'iwae' else ''}, batch {t.batch_size}, learning rate {t.lr:g}, "
            f"KL weight {t.beta:g}, seed {t.seed}, precision {t.precision}.")
    if not history:
        return text + " The run's metrics.jsonl is not here, so its curves are not summarized."
    last = history[-1]
    vals = [(r["val_neg_elbo"], r["epoch"]) for r in history if isinstance(r.get("val_neg_elbo"), (int, float))]
    rows = [("epochs", last["epoch"]), ("training time", f"{sum(r.get('time_s', 0) for r in history):.0f} s"),
            ("last training -ELBO", _nats(last.get("train_neg_elbo")))]
    if vals:
        best = min(vals)
        rows += [("last validation -ELBO", _nats(vals[-1][0])), ("best validation -ELBO", f"{_nats(best[0])} "
                 f"(epoch {best[1]})")]
    if "active_units" in last:
        rows.append(("active units (last epoch)", f"{last['active_units']} of {last.get('latent_units', '?')}"))
    return text + " From `metrics.jsonl` (nats per example, ELBO with one posterior draw):\n\n" + \
        _table(("", ""), rows)


def _evaluation(result: dict[str, Any] | None) -> str:
    if result is None:
        return "## Evaluation\n\nNot evaluated for this card (`vaekit card` without `--no-evaluate` adds it)."
    k = result["iw_samples"]
    protocol = (f"`vaekit evaluate` on the {result['split']} split (n = {result['n']}, binarization "
                f"{result['binarization']}, seed {result['seed']}): the negative ELBO over the whole split, and "
                + (f"the NLL by importance sampling with K = {k} samples per input (Burda et al. 2015)" if k else
                   "no importance-sampled NLL (K = 0)") + f". The numbers are {_density(result['density'])}.")
    rows = [("negative ELBO", _nats(result["neg_elbo"])), ("reconstruction", _nats(result["recon"])),
            ("KL", _nats(result["kl"]))]
    if "nll" in result:
        rows.append((f"NLL (K = {k})", _nats(result["nll"])))
    if "bits_per_dim" in result:
        rows.append(("NLL in bits/dim", f"{result['bits_per_dim']:.4f}"))
    if "active_units" in result:
        rows.append(("active units", result["active_units"]))
    return f"## Evaluation\n\n{protocol}\n\n" + _table(("", ""), rows)


def _density(kind: str) -> str:
    return {"discrete": "log-probabilities of discrete data, comparable with other models' in nats or bits/dim",
            "continuous": "log-densities, comparable only with densities on the same data scaling",
            "unnormalized": "scores, not likelihoods (a discrete likelihood on data off its grid)"}.get(kind, kind)


def _pictures(images: list[tuple[str, str]]) -> str:
    return "## Pictures\n\n" + "\n\n".join(f"{alt}:\n\n![{alt}]({f})" for f, alt in images) if images else ""


def _usage(repo_id: str, model: VAE) -> str:
    image = len(model.data_shape) == 3
    cli = (f"vaekit sample hf://{repo_id} -n 64 -o samples.png\nvaekit reconstruct hf://{repo_id} -o recon.png\n"
           if image else f"vaekit embed hf://{repo_id} -o z.csv\n")
    return ("## Use\n\n```bash\npip install 'vaekit[hub]'\n" + cli + f"vaekit evaluate hf://{repo_id} "
            f"--iw-samples 1000\n```\n\n```python\nimport vaekit\n\nvae = vaekit.load(\"hf://{repo_id}\")\n"
            "x = vae.sample(16)\n```")


def _files() -> str:
    rows = [("config.json", "the model, data and training settings"),
            ("model.safetensors", "the weights (safetensors: no code)"),
            ("latest.json, checkpoints/", "the training run's checkpoint, with the SHA-256 of each file"),
            ("metrics.jsonl", "one record per training epoch"),
            ("anomaly.json", "a fitted anomaly threshold, when there is one")]
    return "## Files\n\n" + _table(("file", "what"), rows)


def _config_block(config: Config) -> str:
    return "## Configuration\n\n```json\n" + json.dumps(config.to_dict(), indent=2) + "\n```"


def _nats(value: Any) -> str:
    return "n/a" if not isinstance(value, (int, float)) or not math.isfinite(value) else f"{value:.3f} nats"


def _table(head: tuple[str, str], rows: list[tuple[str, Any]]) -> str:
    cell = lambda v: str(v).replace("|", "\\|")  # noqa: E731  (a bar inside a cell would end it)
    lines = [f"| {head[0]} | {head[1]} |", "|---|---|"] + [f"| {cell(a)} | {cell(b)} |" for a, b in rows]
    return "\n".join(lines)
