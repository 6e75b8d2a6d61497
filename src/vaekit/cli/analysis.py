"""Commands that analyse data with a trained model: ``embed`` and ``anomaly``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from vaekit import anomaly, checkpoint, data, embedding, hub, plots
from vaekit.batches import floats
from vaekit.cli.common import MODEL_HELP, data_config, model_source, write_scores
from vaekit.errors import VaekitError

TSNE_POINTS = 5000  # the default subset of a t-SNE map


def add_embed(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="posterior means as features (.npz/.csv), a 2-D map, a kNN probe")
    p.add_argument("dir", type=model_source, help=MODEL_HELP)
    p.add_argument("--dataset", help="embed another dataset of the same shape")
    p.add_argument("--data-dir")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("-o", "--output", type=Path, required=True, help="FILE.npz or FILE.csv")
    p.add_argument("--plot", type=Path, help="also draw a 2-D map coloured by label (PNG)")
    p.add_argument("--projection", default="pca", choices=list(embedding.PROJECTIONS),
                   help="how a latent of more than 2 dimensions is mapped to 2-D")
    p.add_argument("--plot-points", type=int, metavar="N", help="draw a seeded random subset of N inputs on the "
                   f"map (default: all for pca, {TSNE_POINTS} for tsne, whose time grows with the count)")
    p.add_argument("--probe", action="store_true",
                   help="kNN accuracy (train -> test split) of the embedding and of PCA with as many dimensions")
    p.add_argument("--k", type=int, default=1, help="neighbours of the probe")
    p.add_argument("--layers", default="top", choices=list(embedding.LAYERS), help="a hierarchy: the top layer's "
                   "posterior means (default), or every layer's, top first, each given the means above it")
    p.set_defaults(func=cmd_embed)


def cmd_embed(args: argparse.Namespace) -> int:
    model, config = checkpoint.load_run(args.dir)
    cfg = data_config(config, args.data_dir, args.dataset)
    splits = data.load(cfg)
    part = data.evaluation_split(splits, args.split, cfg)
    # as stored: bytes, or data on disk, read a batch at a time
    z = embedding.posterior_means(model, part.stored, y=model.labels_of(part.y, f"the {args.split} split"),
                                  layers=args.layers)
    n = len(model.layers)
    which = "" if n == 1 else " of the top layer" if args.layers == "top" else f" of all {n} layers"
    print(f"wrote {embedding.save(args.output, z, part.y)} ({len(z)} x {z.shape[1]} posterior means{which}, "
          f"{args.split})")
    if args.plot:
        _plot_map(args, z.numpy(), None if part.y is None else part.y.numpy(), f"{cfg.dataset} {args.split}")
    if args.probe:
        train = data.evaluation_split(splits, "train", cfg)
        if train.y is None or part.y is None:
            raise VaekitError(f"--probe needs labels, and {cfg.dataset} has none")
        r = embedding.probe(model, train.x, train.y, part.x, part.y, args.k, layers=args.layers)
        print(f"{r.k}-NN accuracy on {args.split} ({r.n_test} examples, fitted on {r.n_train}): "
              f"VAE latent ({r.dim}-d) {r.vae_accuracy:.4f}, PCA-{r.dim} {r.pca_accuracy:.4f}")
    return 0


def _plot_map(args: argparse.Namespace, z: np.ndarray, labels: np.ndarray | None, name: str) -> None:
    """The 2-D map of ``--plot``, drawn from at most ``--plot-points`` inputs."""
    limit = args.plot_points if args.plot_points is not None else TSNE_POINTS if args.projection == "tsne" else None
    if limit is not None and limit < 1:
        raise VaekitError(f"--plot-points must be >= 1, got {limit}")
    shown = f"all {len(z)}"
    if limit is not None and limit < len(z):
        keep = np.sort(np.random.default_rng(0).choice(len(z), limit, replace=False))
        z, labels, shown = z[keep], None if labels is None else labels[keep], f"{limit} of {len(z)} (seeded)"
    if args.projection == "tsne" and z.shape[1] > 2:
        print(f"t-SNE of {len(z)} points ...", flush=True)
    points, axes = embedding.project_2d(z, args.projection)
    title = f"{name}: posterior means (z = {z.shape[1]}), {shown} inputs"
    print(f"wrote {plots.scatter_2d(points, labels, args.plot, title, axes)} ({shown} inputs)")


def add_anomaly(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("anomaly", help="anomaly scores per input, a stored threshold, ROC/PR AUC with labels")
    p.add_argument("dir", type=model_source, help=MODEL_HELP)
    p.add_argument("--dataset", help="score another dataset (name or table file) in the model's data shape")
    p.add_argument("--input", type=Path, help="score the rows of this table file (standardized as in training)")
    p.add_argument("--data-dir")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--score", default="elbo", choices=list(anomaly.SCORES),
                   help="elbo: negative ELBO over --samples draws; nll: importance-sampled; "
                   "recon: squared reconstruction error at the posterior mean; kl: KL(q(z|x) || p(z)), the code's "
                   "divergence from the prior (over --samples draws where it has no closed form); llr: for a "
                   "hierarchical model, the "
                   "likelihood ratio L - L>K over --iw-samples (Havtorn et al. 2021)")
    p.add_argument("--k", type=int, default=1, help="--score llr: how many of the lowest stochastic layers the "
                   "second bound draws from their conditional priors (LLR>K, Havtorn et al. 2021)")
    p.add_argument("--samples", type=int, default=10, help="posterior draws per input for --score elbo and kl")
    p.add_argument("--iw-samples", type=int, default=1000, help="importance samples for --score nll and llr")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--contamination", type=float, help="fit and store a threshold flagging this fraction "
                       "of the validation split (the training split when there is none)")
    group.add_argument("--quantile", type=float, help="fit and store the threshold at this quantile instead")
    p.add_argument("--normal-label", type=int, help="with multi-class labels: this class is normal, others anomalies")
    p.add_argument("-o", "--output", type=Path, default=Path("scores.csv"), help="CSV: index, score[, flag]")
    p.add_argument("--roc", type=Path, help="with labels: draw the ROC curve here (PNG)")
    p.add_argument("--heatmap", type=Path, help="images: the worst inputs, their reconstructions and per-pixel NLL")
    p.add_argument("--worst", type=int, default=8, help="how many of the highest-scoring inputs --heatmap shows")
    p.set_defaults(func=cmd_anomaly)


def cmd_anomaly(args: argparse.Namespace) -> int:
    ckpt = checkpoint.resolve(args.dir)  # one checkpoint set: the model scored is the one a threshold is fitted for
    if args.contamination is not None or args.quantile is not None:  # before minutes of scoring, not after
        hub.refuse_write(ckpt.directory, anomaly.THRESHOLD_FILE)
    model, config = checkpoint.load_run(ckpt)
    cfg = data_config(config, args.data_dir, args.dataset)
    if args.score == "llr":
        args.score = f"llr>{args.k}"
    samples = args.iw_samples if args.score.startswith(("nll", "llr")) else args.samples
    score = lambda x, y: anomaly.score(model, x, args.score, samples, y=y)  # noqa: E731
    splits = None
    if args.input is None or args.contamination is not None or args.quantile is not None:
        splits = data.load(cfg)
    if args.contamination is not None or args.quantile is not None:
        _fit_threshold(args, model, splits, cfg, score, (samples, checkpoint.model_digest(ckpt)))
    x, labels = _scored_data(args, splits, cfg)
    y = model.labels_of(labels, str(args.input) if args.input else f"the {args.split} split")
    scores = score(x, y)
    threshold = anomaly.load_threshold(ckpt)
    if threshold is not None and threshold.score != args.score:
        raise VaekitError(f"the stored threshold is for --score {threshold.score}, not {args.score}; refit it "
                          "with --contamination or --quantile")
    flags = None if threshold is None else (scores > threshold.value).numpy()
    write_scores(args.output, scores.numpy(), flags)
    print(f"wrote {args.output} ({len(scores)} scores" + (f", {int(flags.sum())} flagged above "
          f"{threshold.value:.4g} [{threshold.rule}])" if flags is not None else ")"))
    if args.heatmap:
        _heatmap(args, model, x, y, scores)
    truth = _anomaly_labels(labels, args.normal_label)
    if truth is not None:
        auc = anomaly.auc_scores(truth, scores.numpy())
        print(f"ROC AUC {auc['roc_auc']:.4f}, PR AUC {auc['pr_auc']:.4f} "
              f"({int(truth.sum())} anomalies of {len(truth)})")
        if args.roc:
            print(f"wrote {plots.roc_curve(truth, scores.numpy(), args.roc, f'{args.score} score, {args.split}')}")
    return 0


def _heatmap(args, model, x, y, scores) -> None:
    if not plots.is_image_shape(model.data_shape):
        raise VaekitError(f"--heatmap draws images, but this model's data has shape {model.data_shape}")
    worst = torch.argsort(scores, descending=True)[: args.worst]
    xw, yw = floats(x[worst]), None if y is None else y[worst]
    title = f"the {len(worst)} highest {args.score} scores (above each input) and where they come from"
    heat, recon = anomaly.explain(model, xw, args.score, yw)
    label = "squared error" if args.score == "recon" else "NLL per pixel"
    print(f"wrote {plots.anomaly_heatmaps(xw, recon, heat, scores[worst], args.heatmap, title, label)}")


def _fit_threshold(args, model, splits, cfg, score, fitted: tuple[int, str]) -> None:
    """Fit the threshold on the validation split (else the training split) and store it, stamped with the
    ``fitted`` (number of samples per score, SHA-256 of the scored model's weights)."""
    fit_on = "val" if splits.val is not None else "train"
    part = data.evaluation_split(splits, fit_on, cfg)
    s = score(part.stored, model.labels_of(part.y, f"the {fit_on} split"))
    value = anomaly.threshold_from(s, args.contamination, args.quantile)
    rule = (f"contamination {args.contamination:g}" if args.contamination is not None
            else f"quantile {args.quantile:g}") + f" of the {fit_on} split's {args.score} scores"
    samples, digest = fitted
    path = anomaly.save_threshold(args.dir, anomaly.Threshold(value, args.score, samples, rule, digest))
    print(f"wrote {path}: threshold {value:.4g} ({rule})")


def _scored_data(args, splits, cfg):
    if args.input is None:
        part = data.evaluation_split(splits, args.split, cfg)
        return part.stored, part.y  # as stored: scored a batch at a time
    from vaekit.data import tabular

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
    print("note: the labels are classes, not 0/1 anomaly labels, so no ROC/PR AUC is computed; "
          "--normal-label C takes class C as normal and the others as anomalies", file=sys.stderr)
    return None

