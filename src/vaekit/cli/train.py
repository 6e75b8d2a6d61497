"""``vaekit train`` and ``vaekit evaluate``."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vaekit import checkpoint, evaluation, progress, training
from vaekit.cli.common import MODEL_HELP, model_source
from vaekit.config import PRESETS, UPSAMPLES, Config, flatten, load_config_file, parse_assignment, preset
from vaekit.errors import VaekitError
from vaekit.model import likelihoods, nets, posteriors, priors
from vaekit.previews import PreviewWriter
from vaekit.tensorboard import TensorBoard

# flag dest -> dotted config key; a flag left unset keeps the preset's or the config file's value
TRAIN_FLAGS = {
    "dataset": "data.dataset", "data_dir": "data.data_dir", "download": "data.download",
    "binarize": "data.binarize", "val_size": "data.val_size", "test_size": "data.test_size",
    "test_dataset": "data.test_dataset",
    "image_size": "data.image_size", "channels": "data.channels", "strict": "data.strict",
    "max_memory_gb": "data.max_memory_gb",
    "arch": "model.arch", "conv_channels": "model.channels", "conditional": "model.conditional",
    "objective": "train.objective", "k": "train.iw_k", "kl_warmup_epochs": "train.kl_warmup_epochs",
    "kl_warmup_steps": "train.kl_warmup_steps", "free_bits": "train.free_bits",
    "hidden": "model.hidden", "activation": "model.activation", "latent_dim": "model.latent_dim",
    "likelihood": "model.likelihood", "obs_std": "model.obs_std", "prior": "model.prior",
    "posterior": "model.posterior", "steps": "train.steps",
    "epochs": "train.epochs", "batch_size": "train.batch_size", "lr": "train.lr", "beta": "train.beta",
    "seed": "train.seed", "device": "train.device", "checkpoint_every": "train.checkpoint_every",
    "precision": "train.precision", "early_stopping_patience": "train.early_stopping_patience",
    "nonfinite": "train.nonfinite", "max_skipped_steps": "train.max_skipped_steps",
    "lower_latent_dims": "model.lower_latent_dims", "latent_channels": "model.latent_channels",
    "upsample": "model.upsample",
    "free_bits_per_layer": "train.free_bits_per_layer",
    "grad_clip": "train.grad_clip", "grad_skip": "train.grad_skip",
}


def _hidden(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--hidden {text!r}: expected comma-separated widths like 400 or 200,200") from None
    return sizes


def _numbers(text: str) -> list[float]:
    try:
        return [float(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers like 0.5,0.1,0") from None


def _image_size(text: str) -> list[int]:
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise argparse.ArgumentTypeError(f"--image-size {text!r}: expected HEIGHTxWIDTH like 32x32 or 30x45")
    return [int(p) for p in parts]


EXAMPLES = """examples:
  vaekit train                                          the seed model on the embedded digits, in runs/digits
  vaekit train --preset hvae-conv --dataset mnist       a preset: vaekit presets lists each one's settings
  vaekit train --dataset photos/ --arch conv --epochs 40 --out runs/photos
  vaekit train --resume runs/photos --epochs 80         continue (or extend) a run

A flag left out keeps the value of the preset, else of --config, else the default shown."""


def _default(key: str) -> Any:
    """The built-in default of a dotted config key, as help texts show it."""
    return _shown(flatten(Config().to_dict())[key])


def _shown(value: Any) -> Any:
    """A config value as a flag takes it: lists comma-separated ("none" when empty)."""
    return (",".join(map(str, value)) or "none") if isinstance(value, list) else value


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a VAE and write a checkpoint directory", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", help=f"start from a preset: {', '.join(PRESETS)}")
    p.add_argument("--config", type=Path, help="JSON or TOML file with model/data/train sections")
    _add_data_flags(p)
    p.add_argument("--arch", choices=["mlp", "conv"], help="network type (conv: any HxWxC image)")
    p.add_argument("--conv-channels", type=_hidden, help="conv: channels of each stride-2 layer, e.g. 32,64")
    p.add_argument("--conditional", action="store_true", default=None,
                   help="condition encoder and decoder on the class label (needs a labelled dataset)")
    p.add_argument("--hidden", type=_hidden, help=f"hidden layer widths, e.g. 400 or 200,200 (default "
                   f"{_default('model.hidden')})")
    p.add_argument("--activation", help=f"{', '.join(nets.ACTIVATIONS)} (default {_default('model.activation')})")
    p.add_argument("--latent-dim", type=int, help=f"size of the (top) latent code z (default "
                   f"{_default('model.latent_dim')})")
    p.add_argument("--likelihood", help=f"{', '.join(likelihoods.LIKELIHOODS)} "
                   f"(default {_default('model.likelihood')})")
    p.add_argument("--obs-std", type=float, help="standard deviation of the fixed Gaussian likelihood (the scale "
                   "of the Laplace one)")
    p.add_argument("--prior", help=f"p(z), a registered prior: {', '.join(priors.PRIORS)} (default standard-normal)")
    p.add_argument("--posterior", help=f"q(z|x), a registered posterior family: {', '.join(posteriors.POSTERIORS)} "
                   "(default diagonal-gaussian)")
    p.add_argument("--epochs", type=int, help=f"passes over the training set (default {_default('train.epochs')})")
    p.add_argument("--steps", type=int, help="the run's length in optimizer steps instead of epochs, rounded up "
                   "to whole epochs (for small data sets, whose epochs are a few steps each)")
    p.add_argument("--batch-size", type=int, help=f"examples per step (default {_default('train.batch_size')})")
    p.add_argument("--lr", type=float, help=f"Adam's learning rate (default {_default('train.lr')})")
    _add_objective_flags(p)
    p.add_argument("--seed", type=int, help=f"seed of the weights, batches and draws (default "
                   f"{_default('train.seed')})")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="auto: cuda when there is a GPU")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                   help="bf16: matrix products in bfloat16, loss in fp32; auto (default): bf16 on a CPU with AMX "
                        "or AVX512-BF16 for a Bernoulli model with a large enough step, fp32 otherwise")
    p.add_argument("--checkpoint-every", type=int, help="checkpoint every N epochs (default 1; 0: only at the end)")
    p.add_argument("--early-stopping-patience", type=int, help="stop after N epochs without a better validation "
                   "-ELBO and keep the best weights (default 0: off; needs a validation split)")
    p.add_argument("--nonfinite", choices=["stop", "skip"], help="a non-finite loss or gradient stops training "
                   "(default) or skips that step's update")
    p.add_argument("--max-skipped-steps", type=int, help="with --nonfinite skip: fail once more steps were "
                   "skipped (default 10)")
    p.add_argument("--resume", type=Path, metavar="DIR", help="continue the run in DIR from its latest checkpoint; "
                   "other flags must repeat its config (--epochs may change, e.g. to extend a finished run)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config value, e.g. --set train.eval_batch_size=500 (repeatable)")
    _add_output_flags(p)
    p.set_defaults(func=cmd_train)


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    """What the model is trained and tested on, and how it is prepared."""
    p.add_argument("--dataset", help="mnist, digits (the default), a folder of PNG/JPEG images, "
                   "or a .csv/.parquet/.npy/.npz/.mat file (a table, or an array of images)")
    p.add_argument("--data-dir", help="directory holding mnist/ (default: $VAEKIT_DATA, then the cache)")
    p.add_argument("--download", action="store_true", default=None, help="download MNIST if missing")
    p.add_argument("--binarize", choices=["none", "dynamic", "static", "threshold"],
                   help="grey levels as they are, or 0/1 pixels: resampled each epoch (dynamic), drawn once "
                   f"(static) or at 0.5 (threshold) (default {_default('data.binarize')})")
    p.add_argument("--val-size", type=float, help="validation fraction (<1) or count (>=1) of the train set")
    p.add_argument("--test-size", type=float, help="tables and your images: the seeded test fraction (<1) or count "
                   f"(>=1) (default {_default('data.test_size')})")
    p.add_argument("--test-dataset", help="tables and your images: a separate test file or folder in the same "
                   "format; all of --dataset then trains")
    p.add_argument("--image-size", type=_image_size, help="image data: resize to HEIGHTxWIDTH (default: the "
                   "size of the first image)")
    p.add_argument("--channels", type=int, choices=[1, 3, 4], help="image data: 1 grey, 3 RGB, 4 RGBA "
                   "(default: those of the first image)")
    p.add_argument("--strict", action="store_true", default=None,
                   help="image folders: stop at an unreadable file (default: skip it with a warning)")
    p.add_argument("--max-memory-gb", type=float, metavar="GB", help="an .npy image array larger than this is "
                   "read from disk in pieces while training (default: half the memory available)")


def _add_output_flags(p: argparse.ArgumentParser) -> None:
    """Where the run goes and what it reports on the way."""
    p.add_argument("--out", type=Path, help="run directory (default: runs/<dataset>, numbered if taken)")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    p.add_argument("--tensorboard", type=Path, metavar="DIR", help="also write TensorBoard logs to DIR: every "
                   "epoch's metrics and KL, samples and reconstructions every 5 epochs (pip install "
                   "'vaekit[tensorboard]')")


def _add_objective_flags(p: argparse.ArgumentParser) -> None:
    """The objective, the KL term's controls and the guards of a hierarchy's training."""
    p.add_argument("--beta", type=float, help="weight of the KL term (beta-VAE)")
    p.add_argument("--kl-warmup-epochs", type=float, help="raise beta linearly from 0 over this many epochs")
    p.add_argument("--kl-warmup-steps", type=int, help="raise beta linearly from 0 over this many steps")
    p.add_argument("--lower-latent-dims", type=_hidden, help="a hierarchy: the sizes of the stochastic layers "
                   "below the top one (--latent-dim), top-down, e.g. 32,64")
    p.add_argument("--latent-channels", type=int, help="conv hierarchies: a spatial bottom layer, a map of this "
                   "many channels at half the image size (Havtorn et al. 2021's low-level layer)")
    p.add_argument("--upsample", choices=UPSAMPLES, help="conv decoders: stride-2 transposed convolutions, or "
                   "resize (nearest neighbour) then a 3x3 convolution, free of checkerboard artefacts")
    p.add_argument("--free-bits", type=float, help="nats: floor on each latent dimension's KL (Kingma 2016)")
    p.add_argument("--free-bits-per-layer", type=_numbers, help="nats: that floor for each stochastic layer, top "
                   "first, e.g. 0.25,0,0")
    p.add_argument("--grad-clip", type=float, help="rescale gradients whose global norm exceeds this (0: off)")
    p.add_argument("--grad-skip", type=float, help="skip updates whose gradient norm exceeds this (0: off)")
    p.add_argument("--objective", choices=["elbo", "iwae"], help="training bound (default elbo)")
    p.add_argument("--k", type=int, help="importance samples of --objective iwae (default 50)")


def build_config(args: argparse.Namespace) -> Config:
    """Defaults < preset < --config file < flags < --set assignments."""
    config = preset(args.preset) if args.preset else Config()
    if args.config:
        config = config.override(flatten(load_config_file(args.config)))
    flags = {key: getattr(args, dest) for dest, key in TRAIN_FLAGS.items() if getattr(args, dest) is not None}
    config = config.override(flags)
    return config.override(dict(parse_assignment(a) for a in args.set))


def given_assignments(args: argparse.Namespace) -> dict[str, Any]:
    """Every setting the command line gave (preset, --config file, flags, --set), as dotted keys."""
    given: dict[str, Any] = {}
    if args.preset:
        preset(args.preset)  # an unknown name is refused, listing the valid ones
        given.update(PRESETS[args.preset])
    if args.config:
        given.update(flatten(load_config_file(args.config)))
    given.update({key: getattr(args, dest) for dest, key in TRAIN_FLAGS.items() if getattr(args, dest) is not None})
    given.update(dict(parse_assignment(a) for a in args.set))
    return given


def _resume_dir(args: argparse.Namespace) -> Path:
    if args.overwrite:
        raise VaekitError(f"--resume continues the run in {args.resume}; --overwrite would replace it: pass one")
    if args.out is not None and args.out.resolve() != args.resume.resolve():
        raise VaekitError(f"--resume continues the run in {args.resume} and writes there; --out {args.out} names "
                          "another directory")
    return args.resume


def _run_dir(args: argparse.Namespace, config: Config) -> Path:
    if args.out is not None:
        if checkpoint.exists(args.out) and not args.overwrite:
            raise VaekitError(f"{args.out} already holds a checkpoint; pass --overwrite to replace it, "
                              f"--resume {args.out} to continue it, or choose another --out")
        return args.out
    base = Path("runs") / Path(config.data.dataset).stem  # a path's last name: never the data folder itself
    out, i = base, 1
    while checkpoint.exists(out):
        i += 1
        out = base.with_name(f"{base.name}-{i}")
    return out


class ProgressBar(training.Callback):
    """Each epoch's steps (a bar on a terminal, a line every 30 seconds otherwise) and one line of metrics at
    each epoch's end."""

    def __init__(self, quiet: bool) -> None:
        self.quiet, self.bar, self.epochs, self.steps = quiet, None, 0, 0

    def on_train_start(self, config: Config, steps_per_epoch: int) -> None:
        self.epochs, self.steps = config.train.epochs, steps_per_epoch

    def on_step_path(self, description: str) -> None:
        if not self.quiet:
            tqdm.write(description)

    def on_step(self, epoch: int, step: int) -> None:
        if self.quiet:
            return
        if self.bar is None:
            self.bar = progress.Progress(f"epoch {epoch}/{self.epochs}", self.steps, unit="step")
        self.bar.update(1)

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if not self.quiet:
            tqdm.write(format_epoch(record, self.epochs))


def format_epoch(r: dict[str, Any], epochs: int) -> str:
    """One short line per epoch (under 80 columns for MNIST-sized figures): the training and validation negative
    ELBO, the KL, the KL weight and the active units; metrics.jsonl holds the full record."""
    line = f"epoch {r['epoch']:>{len(str(epochs))}}/{epochs}  -ELBO {r['train_neg_elbo']:.2f}"
    if "val_neg_elbo" in r:
        line += f" val {r['val_neg_elbo']:.2f}"
    line += f"  KL {r['train_kl']:.2f}"
    if "active_units" in r:
        units = r.get("latent_units", len(r["kl_per_dim"] or ()))
        line += f"  beta {r['beta']:.2g}  active {r['active_units']}/{units}"
    return line + f"  {r['time_s']:.1f}s"


def cmd_train(args: argparse.Namespace) -> int:
    progress = ProgressBar(args.quiet)
    logs = [] if args.tensorboard is None else [TensorBoard(args.tensorboard)]
    if args.resume is not None:
        out = _resume_dir(args)
        run = functools.partial(training.resume, out, given_assignments(args))
    else:
        config = build_config(args)
        out = _run_dir(args, config)
        run = functools.partial(training.train, config, out)
    try:
        result = run(callbacks=[progress, PreviewWriter(out), *logs])
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the epoch in progress is lost, the checkpoints are not
        print(f"vaekit: stopped; {_where_to_resume(out)}", file=sys.stderr)
        raise
    if result.rank != 0:
        return 0
    final = result.history[-1]
    print(f"wrote {out}/{checkpoint.CONFIG_FILE} and {checkpoint.WEIGHTS_FILE} "
          f"(final train -ELBO {final['train_neg_elbo']:.3f} nats)")
    if result.best_epoch is not None:
        print(f"early stopping: the saved weights are those of epoch {result.best_epoch}, the best on validation"
              + (f" (stopped after epoch {final['epoch']})" if result.stopped == "early_stopping" else ""))
    if result.skipped_steps:
        print(f"skipped {result.skipped_steps} step(s) with a non-finite loss or gradient")
    for name in ("reconstructions.png", "samples.png"):
        if (out / name).exists():
            print(f"wrote {out / name}")
    return 0


def _where_to_resume(out: Path) -> str:
    """Where a stopped run's last checkpoint is and how to continue it, or that it has none."""
    try:
        epoch = checkpoint.load_state(out).epoch if checkpoint.exists(out) else None
    except VaekitError:
        epoch = None
    if epoch is None:
        return f"no checkpoint of this run was completed in {out}: start it again with the same command"
    return f"the last checkpoint is epoch {epoch} in {out}; continue with `vaekit train --resume {out}`"


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="test negative ELBO, importance-sampled NLL and active units")
    p.add_argument("dir", type=model_source, help=MODEL_HELP)
    p.add_argument("--dataset", help="evaluate on another dataset of the same shape")
    p.add_argument("--data-dir")
    p.add_argument("--download", action="store_true", default=None)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--iw-samples", type=int, default=1000, help="importance samples K (0 skips the NLL)")
    p.add_argument("--limit", type=int, metavar="N", help="evaluate the first N examples of the split only")
    p.add_argument("--seed", type=int, help="seed of the evaluation's posterior draws (default: the run's)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in (("dataset", args.dataset), ("data_dir", args.data_dir),
                                   ("download", args.download)) if v is not None}
    result = evaluation.evaluate(args.dir, args.split, args.iw_samples, args.device, overrides, args.seed,
                                 args.limit)
    if args.json:
        print(json.dumps(result))
        return 0
    rows = [("negative ELBO", result["neg_elbo"]), ("  reconstruction", result["recon"]),
            ("  KL", result["kl"])]
    if "nll" in result:
        rows.append((f"NLL (K={result['iw_samples']})", result["nll"]))
    print(f"{args.dir}: {result['split']} split, n={result['n']}, likelihood {result['likelihood']}, "
          f"binarization {result['binarization']}")
    notes = {"discrete": "log-probabilities of discrete data: comparable in nats or bits/dim",
             "continuous": "log-densities: comparable only with densities on the same data scaling",
             "unnormalized": "a discrete likelihood on data off its grid, e.g. Bernoulli on grey levels: "
                             "a score, not a likelihood"}
    print(f"  density {result['density']} ({notes.get(result['density'], '')})")
    for name, value in rows:
        print(f"  {name:<20} {value:10.3f} nats")
    bits = [("negative ELBO", "neg_elbo_bits_per_dim"), (f"NLL (K={result['iw_samples']})", "bits_per_dim")]
    for name, key in bits:
        if key in result:
            print(f"  {name:<20} {result[key]:10.4f} bits/dim")
    units = sum(result.get("latent_dims", [result["latent_dim"]]))
    print(f"  {'active units':<20} {result['active_units']:>6d} / {units}")
    if "kl_per_layer" in result:
        per_layer = zip(result["kl_per_layer"], result["active_units_per_layer"], result["latent_dims"], strict=True)
        print("  KL per layer, top first: " + ", ".join(f"{kl:.2f} nats ({a}/{d} active)" for kl, a, d in per_layer))
    print(f"  ({result['seconds']:.1f} s)")
    return 0


def add_presets(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("presets", help="list the presets and the settings each one makes")
    p.add_argument("name", nargs="?", help="show only this preset")
    p.set_defaults(func=cmd_presets)


def cmd_presets(args: argparse.Namespace) -> int:
    names = [args.name] if args.name else list(PRESETS)
    defaults = flatten(Config().to_dict())
    for name in names:
        settings = flatten(preset(name).to_dict())  # an unknown name is refused here, with the valid ones
        changed = {k: v for k, v in settings.items() if v != defaults[k]}
        print(f"{name}:")
        for key, value in changed.items():
            print(f"  {key:<28} {_shown(value)}  (default {_default(key)})")
    return 0
