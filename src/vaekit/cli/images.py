"""Commands that write images: ``sample``, ``reconstruct``, ``interpolate``, ``traverse``."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vaekit import checkpoint, data, generate, plots
from vaekit.batches import floats
from vaekit.cli.common import MODEL_HELP, data_config, input_example, model_source, require_images
from vaekit.errors import VaekitError


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="decode draws from the prior (or a mixture fitted to the data) into a PNG grid")
    p.add_argument("dir", type=model_source, help=MODEL_HELP)
    p.add_argument("-n", type=int, default=64)
    p.add_argument("-o", "--output", type=Path, default=Path("samples.png"))
    p.add_argument("--temperature", type=float, default=1.0, help="scale of the draws around the prior/components")
    p.add_argument("--sampler", default="prior", choices=list(generate.SAMPLERS),
                   help="prior: z from the model's prior p(z); gmm: z ~ a Gaussian mixture fitted to the training "
                   "set's posterior means")
    p.add_argument("--components", type=int, default=10, help="mixture components for --sampler gmm")
    p.add_argument("--data-dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nrow", type=int, default=8)
    p.add_argument("--label", help="conditional models: the class to draw (default: one row of --nrow per class)")
    p.set_defaults(func=cmd_sample)
    p = sub.add_parser("interpolate", help="decode the path between two inputs' latent codes (PNG strip, GIF)")
    p.add_argument("dir", type=model_source, help=MODEL_HELP)
    p.add_argument("--from", dest="a", required=True, help="an index into --split, or an image file")
    p.add_argument("--to", dest="b", required=True, help="an index into --split, or an image file")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--method", default="lerp", choices=list(generate.INTERPOLATIONS))
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--data-dir")
    p.add_argument("-o", "--output", type=Path, default=Path("interpolation.png"))
    p.add_argument("--gif", type=Path, help="also write an animated GIF there and back")
    p.add_argument("--label", help="conditional models: the class to decode the path with (dataset inputs are "
                   "encoded with their own labels, image files with this one)")
    p.set_defaults(func=cmd_interpolate)
    p = sub.add_parser("traverse", help="sweep the most informative latent dimensions; one row each (PNG)")
    p.add_argument("dir", type=model_source, help=MODEL_HELP)
    p.add_argument("--dims", type=int, default=8, help="how many dimensions, ranked by average KL")
    p.add_argument("--steps", type=int, default=9)
    p.add_argument("--span", type=float, default=3.0, help="sweep each dimension from -span to +span")
    p.add_argument("--base", type=int, help="keep the other dimensions at this test example's code (default 0)")
    p.add_argument("--label", help="conditional models: the class to decode with (default: the --base example's)")
    p.add_argument("--data-dir")
    p.add_argument("-o", "--output", type=Path, default=Path("traversal.png"))
    p.set_defaults(func=cmd_traverse)
    p = sub.add_parser("reconstruct", help="inputs above their reconstructions, as a PNG grid")
    p.add_argument("dir", type=model_source, help=MODEL_HELP)
    p.add_argument("-n", type=int, default=16)
    p.add_argument("-o", "--output", type=Path, default=Path("reconstructions.png"))
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--data-dir")
    p.set_defaults(func=cmd_reconstruct)


def cmd_sample(args: argparse.Namespace) -> int:
    model, config = checkpoint.load_run(args.dir)
    require_images(model, "sample")
    if args.n < 1 or args.temperature < 0:
        raise VaekitError(f"need -n >= 1 and --temperature >= 0, got -n {args.n}, --temperature {args.temperature}")
    gmm = None
    if args.sampler == "gmm":
        cfg = data_config(config, args.data_dir)
        train = data.evaluation_split(data.load(cfg), "train", cfg)
        y = model.labels_of(train.y, "the train split")
        gmm = generate.fit_latent_gmm(model, train.x, args.components, args.seed, y)
    if model.config.conditional and args.label is None:
        x = generate.sample_per_label(model, args.nrow, args.temperature, args.seed, gmm)
        print(f"one row per label: {', '.join(model.config.labels)}")
        print(f"wrote {plots.labelled_grid(x, args.output, args.nrow, list(model.config.labels))}")
        return 0
    x = generate.sample(model, args.n, args.temperature, args.seed, gmm, args.label)
    print(f"wrote {plots.save_grid(x, args.output, nrow=args.nrow)}")
    return 0


def cmd_interpolate(args: argparse.Namespace) -> int:
    model, config = checkpoint.load_run(args.dir)
    require_images(model, "interpolate")
    require_label(model, args.label, "interpolate")
    needs_data = not all(Path(s).suffix for s in (args.a, args.b))
    split = None
    if needs_data:
        cfg = data_config(config, args.data_dir)
        split = data.evaluation_split(data.load(cfg), args.split, cfg)
    xa, xb = (input_example(s, split, model.data_shape) for s in (args.a, args.b))
    y_ends = None
    if model.config.conditional:  # each end with its own class where the dataset says it
        y_ends = torch.tensor([_label_of(s, split, model, args.label) for s in (args.a, args.b)])
    frames = generate.interpolate(model, xa, xb, args.steps, args.method, args.label, y_ends)
    ends = ["A", *(f"{i / (len(frames) - 1):.2f}" for i in range(1, len(frames) - 1)), "B"]
    path = plots.labelled_grid(frames, args.output, len(frames), col_labels=ends,
                               title=f"{args.method} from A ({args.a}) to B ({args.b})")
    print(f"wrote {path}{_lower_note(model)}")
    if args.gif:
        print(f"wrote {plots.save_gif(frames, args.gif)}")
    return 0


def cmd_traverse(args: argparse.Namespace) -> int:
    model, config = checkpoint.load_run(args.dir)
    require_images(model, "traverse")
    if args.base is None:
        require_label(model, args.label, "traverse", "or --base")
    cfg = data_config(config, args.data_dir)
    splits = data.load(cfg)
    test = data.evaluation_split(splits, "test", cfg)
    base = None if args.base is None else input_example(str(args.base), test, model.data_shape)
    cond = generate.Conditioning()
    if model.config.conditional:
        y = model.labels_of(test.y, "the test split")
        cond = generate.Conditioning(y, None if args.base is None else y[[args.base]], args.label)
    t = generate.traverse(model, test.x, base, args.dims, args.steps, args.span, cond)
    rows = [f"z[{d}]  {t.measure} {s:.2f}" for d, s in zip(t.dims, t.scores, strict=True)]
    title = f"latent dimensions by {t.ranked_by} of the test split; columns: the value of that dimension"
    path = plots.labelled_grid(t.grid, args.output, args.steps, rows, [f"{v:+.2g}" for v in t.values], title)
    print(f"wrote {path} (rows: latent dimensions {t.dims}, by {t.ranked_by} of the test split; columns: "
          f"-{args.span:g} to +{args.span:g}){_lower_note(model)}")
    return 0


def _lower_note(model) -> str:
    """What a hierarchy's lower layers are set to when a top-layer code is decoded."""
    if len(model.layers) == 1:
        return ""
    return f" (codes of the top layer of {len(model.layers)}; the layers below at their conditional priors' means)"


def require_label(model, label: str | None, command: str, alternative: str = "") -> None:
    """A conditional model's ``command`` needs --label: say so in the CLI's words."""
    if model.config.conditional and label is None:
        raise VaekitError(f"this model is conditional: {command} needs --label {alternative}".rstrip() +
                          f" (labels: {', '.join(model.config.labels)})")


def _label_of(spec: str, split: data.Split | None, model, label: str | None) -> int:
    """The class index an interpolation end is encoded with: its dataset label, else --label's."""
    if split is not None and spec.lstrip("-").isdigit():
        return int(model.labels_of(split.y, f"the {split.name} split")[int(spec)])
    return model.label_index(label)


def cmd_reconstruct(args: argparse.Namespace) -> int:
    model, config = checkpoint.load_run(args.dir)
    require_images(model, "reconstruct")
    cfg = config.data if args.data_dir is None else config.override({"data.data_dir": args.data_dir}).data
    split = data.evaluation_split(data.load(cfg), args.split, cfg)
    x = floats(split.stored[: args.n])  # the values of those n only
    y = model.labels_of(split.y, f"the {args.split} split")  # the true classes
    y = None if y is None else y[: args.n]
    nrow = min(len(x), 8)
    rows = [torch.cat([x[i : i + nrow], model.reconstruct(x[i : i + nrow], None if y is None else y[i : i + nrow])])
            for i in range(0, len(x), nrow)]
    print(f"wrote {plots.save_grid(torch.cat(rows), args.output, nrow=nrow)}")
    return 0
