"""The ``vaekit`` command line: each command parses its flags, builds a config and calls the library."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from vaekit import anomaly, checkpoint, data, embedding, evaluation, generate, plots, training
from vaekit.config import PRESETS, Config, flatten, load_config_file, parse_assignment, preset
from vaekit.errors import VaekitError

log = logging.getLogger("vaekit")

# flag dest -> dotted config key; a flag left unset keeps the preset's or the config file's value
TRAIN_FLAGS = {
    "dataset": "data.dataset", "data_dir": "data.data_dir", "download": "data.download",
    "binarize": "data.binarize", "val_size": "data.val_size",
    "hidden": "model.hidden", "activation": "model.activation", "latent_dim": "model.latent_dim",
    "likelihood": "model.likelihood", "obs_std": "model.obs_std",
    "epochs": "train.epochs", "batch_size": "train.batch_size", "lr": "train.lr", "beta": "train.beta",
    "seed": "train.seed", "device": "train.device", "checkpoint_every": "train.checkpoint_every",
    "precision": "train.precision",
}


def _hidden(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--hidden {text!r}: expected comma-separated widths like 400 or 200,200") from None
    return sizes


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a VAE and write a checkpoint directory")
    p.add_argument("--preset", help=f"start from a preset: {', '.join(PRESETS)}")
    p.add_argument("--config", type=Path, help="JSON or TOML file with model/data/train sections")
    p.add_argument("--dataset", help="dataset name (mnist, digits); default digits")
    p.add_argument("--data-dir", help="directory holding mnist/ (default: $VAEKIT_DATA, then the cache)")
    p.add_argument("--download", action="store_true", default=None, help="download MNIST if missing")
    p.add_argument("--binarize", choices=["none", "dynamic", "static", "threshold"])
    p.add_argument("--val-size", type=float, help="validation fraction (<1) or count (>=1) of the train set")
    p.add_argument("--hidden", type=_hidden, help="hidden layer widths, e.g. 400 or 200,200")
    p.add_argument("--activation")
    p.add_argument("--latent-dim", type=int)
    p.add_argument("--likelihood", help="bernoulli, gaussian, gaussian-learned")
    p.add_argument("--obs-std", type=float, help="standard deviation of the fixed Gaussian likelihood")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--beta", type=float, help="weight of the KL term (beta-VAE)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", choices=["fp32", "bf16"], help="bf16: bfloat16 autocast, loss in fp32")
    p.add_argument("--checkpoint-every", type=int, help="checkpoint every N epochs (default 1; 0: only at the end)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config value, e.g. --set train.eval_batch_size=500 (repeatable)")
    p.add_argument("--out", type=Path, help="run directory (default: runs/<dataset>, numbered if taken)")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    p.set_defaults(func=cmd_train)


def build_config(args: argparse.Namespace) -> Config:
    """Defaults < preset < --config file < flags < --set assignments."""
    config = preset(args.preset) if args.preset else Config()
    if args.config:
        config = config.override(flatten(load_config_file(args.config)))
    flags = {key: getattr(args, dest) for dest, key in TRAIN_FLAGS.items() if getattr(args, dest) is not None}
    config = config.override(flags)
    return config.override(dict(parse_assignment(a) for a in args.set))


def _run_dir(args: argparse.Namespace, config: Config) -> Path:
    if args.out is not None:
        if (args.out / checkpoint.CONFIG_FILE).exists() and not args.overwrite:
            raise VaekitError(f"{args.out} already holds a checkpoint; pass --overwrite to replace it, "
                              "or choose another --out")
        return args.out
    base = Path("runs") / config.data.dataset
    out, i = base, 1
    while (out / checkpoint.CONFIG_FILE).exists():
        i += 1
        out = base.with_name(f"{base.name}-{i}")
    return out


class ProgressBar(training.Callback):
    """A tqdm bar per epoch and one line of metrics at each epoch's end."""

    def __init__(self, quiet: bool) -> None:
        self.quiet, self.bar, self.epochs, self.steps = quiet, None, 0, 0

    def on_train_start(self, config: Config, steps_per_epoch: int) -> None:
        self.epochs, self.steps = config.train.epochs, steps_per_epoch

    def on_step(self, epoch: int, step: int) -> None:
        if self.quiet:
            return
        if self.bar is None:
            self.bar = tqdm(total=self.steps, desc=f"epoch {epoch}/{self.epochs}", leave=False, unit="step",
                            disable=None)  # no bar when stderr is not a terminal
        self.bar.update(1)

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if not self.quiet:
            tqdm.write(format_epoch(record, self.epochs))


def format_epoch(r: dict[str, Any], epochs: int) -> str:
    """One line per epoch: train (and validation) negative ELBO with its reconstruction and KL parts."""
    line = (f"epoch {r['epoch']:>3}/{epochs}  train -ELBO {r['train_neg_elbo']:9.3f} "
            f"(recon {r['train_recon']:9.3f}, KL {r['train_kl']:7.3f})")
    if "val_neg_elbo" in r:
        line += f"  val -ELBO {r['val_neg_elbo']:9.3f} (recon {r['val_recon']:9.3f}, KL {r['val_kl']:7.3f})"
    return line + f"  {r['time_s']:.2f}s"


def cmd_train(args: argparse.Namespace) -> int:
    config = build_config(args)
    out = _run_dir(args, config)
    result = training.train(config, out, callbacks=[ProgressBar(args.quiet)])
    if result.rank != 0:
        return 0
    final = result.history[-1]
    print(f"wrote {out}/{checkpoint.CONFIG_FILE} and {checkpoint.WEIGHTS_FILE} "
          f"(final train -ELBO {final['train_neg_elbo']:.3f} nats)")
    for name in ("reconstructions.png", "samples.png"):
        if (out / name).exists():
            print(f"wrote {out / name}")
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="test negative ELBO, importance-sampled NLL and active units")
    p.add_argument("dir", type=Path, help="checkpoint directory")
    p.add_argument("--dataset", help="evaluate on another dataset of the same shape")
    p.add_argument("--data-dir")
    p.add_argument("--download", action="store_true", default=None)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--iw-samples", type=int, default=1000, help="importance samples K (0 skips the NLL)")
    p.add_argument("--seed", type=int, help="seed of the evaluation's posterior draws (default: the run's)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in (("dataset", args.dataset), ("data_dir", args.data_dir),
                                   ("download", args.download)) if v is not None}
    result = evaluation.evaluate(args.dir, args.split, args.iw_samples, args.device, overrides, args.seed)
    if args.json:
        print(json.dumps(result))
        return 0
    rows = [("negative ELBO", result["neg_elbo"]), ("  reconstruction", result["recon"]),
            ("  KL", result["kl"])]
    if "nll" in result:
        rows.append((f"NLL (K={result['iw_samples']})", result["nll"]))
    print(f"{args.dir}: {result['split']} split, n={result['n']}, likelihood {result['likelihood']}, "
          f"binarization {result['binarization']}")
    for name, value in rows:
        print(f"  {name:<20} {value:10.3f} nats")
    print(f"  {'active units':<20} {result['active_units']:>6d} / {result['latent_dim']}")
    print(f"  ({result['seconds']:.1f} s)")
    return 0


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="decode draws from the prior (or a mixture fitted to the data) into a PNG grid")
    p.add_argument("dir", type=Path)
    p.add_argument("-n", type=int, default=64)
    p.add_argument("-o", "--output", type=Path, default=Path("samples.png"))
    p.add_argument("--temperature", type=float, default=1.0, help="scale of the draws around the prior/components")
    p.add_argument("--sampler", default="prior", choices=list(generate.SAMPLERS),
                   help="prior: z ~ N(0, I); gmm: z ~ a Gaussian mixture fitted to the training set's posterior means")
    p.add_argument("--components", type=int, default=10, help="mixture components for --sampler gmm")
    p.add_argument("--data-dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nrow", type=int, default=8)
    p.set_defaults(func=cmd_sample)
    p = sub.add_parser("interpolate", help="decode the path between two inputs' latent codes (PNG strip, GIF)")
    p.add_argument("dir", type=Path)
    p.add_argument("--from", dest="a", required=True, help="an index into --split, or an image file")
    p.add_argument("--to", dest="b", required=True, help="an index into --split, or an image file")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--method", default="lerp", choices=list(generate.INTERPOLATIONS))
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--data-dir")
    p.add_argument("-o", "--output", type=Path, default=Path("interpolation.png"))
    p.add_argument("--gif", type=Path, help="also write an animated GIF there and back")
    p.set_defaults(func=cmd_interpolate)
    p = sub.add_parser("traverse", help="sweep the most informative latent dimensions; one row each (PNG)")
    p.add_argument("dir", type=Path)
    p.add_argument("--dims", type=int, default=8, help="how many dimensions, ranked by average KL")
    p.add_argument("--steps", type=int, default=9)
    p.add_argument("--span", type=float, default=3.0, help="sweep each dimension from -span to +span")
    p.add_argument("--base", type=int, help="keep the other dimensions at this test example's code (default 0)")
    p.add_argument("--data-dir")
    p.add_argument("-o", "--output", type=Path, default=Path("traversal.png"))
    p.set_defaults(func=cmd_traverse)
    p = sub.add_parser("reconstruct", help="inputs above their reconstructions, as a PNG grid")
    p.add_argument("dir", type=Path)
    p.add_argument("-n", type=int, default=16)
    p.add_argument("-o", "--output", type=Path, default=Path("reconstructions.png"))
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--data-dir")
    p.set_defaults(func=cmd_reconstruct)


def _require_images(model: Any, what: str) -> None:
    if not plots.is_image_shape(model.data_shape):
        raise VaekitError(f"{what} writes images, but this model's data has shape {model.data_shape}")


def cmd_sample(args: argparse.Namespace) -> int:
    model, config = checkpoint.load_run(args.dir)
    _require_images(model, "sample")
    if args.n < 1 or args.temperature < 0:
        raise VaekitError(f"need -n >= 1 and --temperature >= 0, got -n {args.n}, --temperature {args.temperature}")
    gmm = None
    if args.sampler == "gmm":
        cfg = _data_config(config, args.data_dir)
        train = data.evaluation_split(data.load(cfg), "train", cfg)
        gmm = generate.fit_latent_gmm(model, train.x, args.components, args.seed)
    x = generate.sample(model, args.n, args.temperature, args.seed, gmm)
    print(f"wrote {plots.save_grid(x, args.output, nrow=args.nrow)}")
    return 0


def _data_config(config: Config, data_dir: str | None):
    return config.data if data_dir is None else config.override({"data.data_dir": data_dir}).data


def _input(spec: str, split: data.Split, shape: tuple[int, ...]):
    """A dataset index or an image file, as a tensor of the model's data shape."""
    if spec.lstrip("-").isdigit():
        i = int(spec)
        if not -len(split) <= i < len(split):
            raise VaekitError(f"index {i} is outside the {split.name} split of {len(split)} examples")
        return split.x[i]
    return plots.read_image(Path(spec), shape)


def cmd_interpolate(args: argparse.Namespace) -> int:
    model, config = checkpoint.load_run(args.dir)
    _require_images(model, "interpolate")
    needs_data = not all(Path(s).suffix for s in (args.a, args.b))
    split = None
    if needs_data:
        cfg = _data_config(config, args.data_dir)
        split = data.evaluation_split(data.load(cfg), args.split, cfg)
    xa, xb = (_input(s, split, model.data_shape) for s in (args.a, args.b))
    frames = generate.interpolate(model, xa, xb, args.steps, args.method)
    print(f"wrote {plots.save_grid(frames, args.output, nrow=len(frames))}")
    if args.gif:
        print(f"wrote {plots.save_gif(frames, args.gif)}")
    return 0


def cmd_traverse(args: argparse.Namespace) -> int:
    model, config = checkpoint.load_run(args.dir)
    _require_images(model, "traverse")
    cfg = _data_config(config, args.data_dir)
    splits = data.load(cfg)
    test = data.evaluation_split(splits, "test", cfg)
    base = None if args.base is None else _input(str(args.base), test, model.data_shape)
    grid, dims = generate.traverse(model, test.x, base, args.dims, args.steps, args.span)
    print(f"wrote {plots.save_grid(grid, args.output, nrow=args.steps)} (rows: latent dimensions {dims}, by "
          f"average KL on the test split; columns: -{args.span:g} to +{args.span:g})")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    import torch

    model, config = checkpoint.load_run(args.dir)
    _require_images(model, "reconstruct")
    cfg = config.data if args.data_dir is None else config.override({"data.data_dir": args.data_dir}).data
    x = data.evaluation_split(data.load(cfg), args.split, cfg).x[: args.n]
    nrow = min(len(x), 8)
    rows = [torch.cat([x[i : i + nrow], model.reconstruct(x[i : i + nrow])]) for i in range(0, len(x), nrow)]
    print(f"wrote {plots.save_grid(torch.cat(rows), args.output, nrow=nrow)}")
    return 0


def _add_embed(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="posterior means as features (.npz/.csv), a 2-D map, a kNN probe")
    p.add_argument("dir", type=Path, help="checkpoint directory")
    p.add_argument("--dataset", help="embed another dataset of the same shape")
    p.add_argument("--data-dir")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("-o", "--output", type=Path, required=True, help="FILE.npz or FILE.csv")
    p.add_argument("--plot", type=Path, help="also draw a 2-D map coloured by label (PNG)")
    p.add_argument("--projection", default="pca", choices=list(embedding.PROJECTIONS),
                   help="how a latent of more than 2 dimensions is mapped to 2-D")
    p.add_argument("--probe", action="store_true",
                   help="kNN accuracy (train -> test split) of the embedding and of PCA with as many dimensions")
    p.add_argument("--k", type=int, default=1, help="neighbours of the probe")
    p.set_defaults(func=cmd_embed)


def cmd_embed(args: argparse.Namespace) -> int:
    model, config = checkpoint.load_run(args.dir)
    overrides = {f"data.{k}": v for k, v in (("dataset", args.dataset), ("data_dir", args.data_dir)) if v}
    cfg = config.override(overrides).data
    splits = data.load(cfg)
    part = data.evaluation_split(splits, args.split, cfg)
    z = embedding.posterior_means(model, part.x)
    print(f"wrote {embedding.save(args.output, z, part.y)} ({len(z)} x {z.shape[1]} posterior means, {args.split})")
    if args.plot:
        points, axes = embedding.project_2d(z.numpy(), args.projection)
        title = f"{cfg.dataset} {args.split}: posterior means (z = {z.shape[1]})"
        labels = None if part.y is None else part.y.numpy()
        print(f"wrote {plots.scatter_2d(points, labels, args.plot, title, axes)}")
    if args.probe:
        train = data.evaluation_split(splits, "train", cfg)
        if train.y is None or part.y is None:
            raise VaekitError(f"--probe needs labels, and {cfg.dataset} has none")
        r = embedding.probe(model, train.x, train.y, part.x, part.y, args.k)
        print(f"{r.k}-NN accuracy on {args.split} ({r.n_test} examples, fitted on {r.n_train}): "
              f"VAE latent ({r.dim}-d) {r.vae_accuracy:.4f}, PCA-{r.dim} {r.pca_accuracy:.4f}")
    return 0


def _add_anomaly(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("anomaly", help="anomaly scores per input, a stored threshold, ROC/PR AUC with labels")
    p.add_argument("dir", type=Path, help="checkpoint directory")
    p.add_argument("--dataset", help="score another dataset (name or table file) in the model's data shape")
    p.add_argument("--input", type=Path, help="score the rows of this table file (standardized as in training)")
    p.add_argument("--data-dir")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--score", default="elbo", choices=list(anomaly.SCORES),
                   help="elbo: negative ELBO over --samples draws; nll: importance-sampled; recon: -log p(x|mu)")
    p.add_argument("--samples", type=int, default=10, help="posterior draws per input for --score elbo")
    p.add_argument("--iw-samples", type=int, default=1000, help="importance samples for --score nll")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--contamination", type=float, help="fit and store a threshold flagging this fraction "
                       "of the validation split (the training split when there is none)")
    group.add_argument("--quantile", type=float, help="fit and store the threshold at this quantile instead")
    p.add_argument("--normal-label", type=int, help="with multi-class labels: this class is normal, others anomalies")
    p.add_argument("-o", "--output", type=Path, default=Path("scores.csv"), help="CSV: index, score[, flag]")
    p.add_argument("--roc", type=Path, help="with labels: draw the ROC curve here (PNG)")
    p.set_defaults(func=cmd_anomaly)


def cmd_anomaly(args: argparse.Namespace) -> int:
    model, config = checkpoint.load_run(args.dir)
    overrides = {f"data.{k}": v for k, v in (("dataset", args.dataset), ("data_dir", args.data_dir)) if v}
    cfg = config.override(overrides).data
    score = lambda x: anomaly.score(model, x, args.score, args.samples, args.iw_samples)  # noqa: E731
    splits = None
    if args.input is None or args.contamination is not None or args.quantile is not None:
        splits = data.load(cfg)
    if args.contamination is not None or args.quantile is not None:
        _fit_threshold(args, splits, cfg, score)
    x, labels = _scored_data(args, splits, cfg)
    scores = score(x)
    threshold = anomaly.load_threshold(args.dir)
    if threshold is not None and threshold.score != args.score:
        raise VaekitError(f"the stored threshold is for --score {threshold.score}, not {args.score}; refit it "
                          "with --contamination or --quantile")
    flags = None if threshold is None else (scores > threshold.value).numpy()
    _write_scores(args.output, scores.numpy(), flags)
    print(f"wrote {args.output} ({len(scores)} scores" + (f", {int(flags.sum())} flagged above "
          f"{threshold.value:.4g} [{threshold.rule}])" if flags is not None else ")"))
    truth = _anomaly_labels(labels, args.normal_label)
    if truth is not None:
        auc = anomaly.auc_scores(truth, scores.numpy())
        print(f"ROC AUC {auc['roc_auc']:.4f}, PR AUC {auc['pr_auc']:.4f} "
              f"({int(truth.sum())} anomalies of {len(truth)})")
        if args.roc:
            print(f"wrote {plots.roc_curve(truth, scores.numpy(), args.roc, f'{args.score} score, {args.split}')}")
    return 0


def _fit_threshold(args, splits, cfg, score) -> None:
    fit_on = "val" if splits.val is not None else "train"
    s = score(data.evaluation_split(splits, fit_on, cfg).x)
    value = anomaly.threshold_from(s, args.contamination, args.quantile)
    rule = (f"contamination {args.contamination:g}" if args.contamination is not None
            else f"quantile {args.quantile:g}") + f" of the {fit_on} split's {args.score} scores"
    path = anomaly.save_threshold(args.dir, anomaly.Threshold(value, args.score, args.samples, rule))
    print(f"wrote {path}: threshold {value:.4g} ({rule})")


def _scored_data(args, splits, cfg):
    if args.input is None:
        part = data.evaluation_split(splits, args.split, cfg)
        return part.x, part.y
    from vaekit import tabular

    table = tabular.read(args.input, cfg.label_column)
    x = torch.from_numpy(table.x)
    preprocess = checkpoint.load_preprocess(args.dir)
    return (preprocess(x) if preprocess is not None else x), (None if table.y is None else torch.from_numpy(table.y))


def _anomaly_labels(labels, normal_label):
    if labels is None:
        return None
    y = labels.numpy()
    if normal_label is not None:
        return (y != normal_label).astype(int)
    if set(np.unique(y).tolist()) <= {0, 1}:
        return y.astype(int)
    print("labels are not 0/1: pass --normal-label to score ROC/PR AUC", file=sys.stderr)
    return None


def _write_scores(path: Path, scores, flags) -> None:
    from vaekit.fileio import atomic_path

    columns = ["index", "score"] + ([] if flags is None else ["flag"])
    table = [np.arange(len(scores)), scores] + ([] if flags is None else [flags.astype(int)])
    fmt = ["%d", "%.6g"] + ([] if flags is None else ["%d"])
    with atomic_path(path) as tmp:
        np.savetxt(tmp, np.column_stack(table), delimiter=",", header=",".join(columns), comments="", fmt=fmt)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vaekit", description="Variational autoencoders: train, evaluate, generate.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_evaluate(sub)
    _add_generate(sub)
    _add_embed(sub)
    _add_anomaly(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vaekit`` console script; returns the exit status."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except VaekitError as e:
        print(f"vaekit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vaekit: interrupted", file=sys.stderr)
        return 130
