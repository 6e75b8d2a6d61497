"""Models on the Hugging Face Hub: ``hf://owner/name[@revision][/folder]`` in place of a checkpoint directory.

An id is downloaded (or found in the local cache, e.g. offline with ``HF_HUB_OFFLINE=1``) through
``huggingface_hub``, an optional dependency, and read from there as any run directory: JSON and safetensors
only, so a model from the Hub can no more run code than a local one. Only the files a model needs are
fetched; the optimizer state of a training run is left on the Hub (a downloaded run is not resumed).
"""

from __future__ import annotations

import itertools
from pathlib import Path

from vaekit.errors import CheckpointError

PREFIX = "hf://"
# what loading, the analysis commands, `plot` and `serve` read; training_state.* (the optimizer moments, as big
# as the model twice over) only `train --resume` does
PATTERNS = ("*.json", "*.jsonl", "*.md", "*.png", "*model.safetensors", "*preprocessing.safetensors")
MINIMUM = "1.13"  # the first huggingface_hub with parse_hf_uri


def is_hub_id(source: object) -> bool:
    """True when ``source`` is a string naming a Hub repository (``hf://...``)."""
    return isinstance(source, str) and source.startswith(PREFIX)


def snapshot(hub_id: str) -> Path:
    """The local folder holding the model that ``hub_id`` names, downloaded into the Hub cache if needed."""
    hf = _library()
    try:
        uri = hf.parse_hf_uri(hub_id)
    except ValueError as e:
        raise CheckpointError(f"{e} (vaekit reads hf://owner/name, hf://owner/name@revision, "
                              "hf://owner/name@revision/folder)") from e
    if uri.type != "model":
        raise CheckpointError(f"{hub_id} names a {uri.type} repository; vaekit models are model repositories")
    folder = uri.path_in_repo.strip("/")
    if any(part in ("..", ".") for part in folder.split("/")):  # a folder of the repository, never outside it
        raise CheckpointError(f"{hub_id}: the folder {folder!r} must be a path inside the repository")
    patterns = [f"{folder}/{p}" if folder else p for p in PATTERNS]
    try:
        root = hf.snapshot_download(uri.id, revision=uri.revision, allow_patterns=patterns,
                                    library_name="vaekit")
    except hf.errors.LocalEntryNotFoundError as e:  # also a snapshot cached in part
        raise CheckpointError(f"{hub_id} is not (completely) in the local Hugging Face cache and the Hub cannot be "
                              f"reached (offline, or HF_HUB_OFFLINE is set): {_first_line(e)}") from e
    except (hf.errors.RepositoryNotFoundError, hf.errors.RevisionNotFoundError) as e:
        raise CheckpointError(f"{hub_id}: {_first_line(e)}") from e
    except (hf.errors.HfHubHTTPError, OSError) as e:
        raise CheckpointError(f"cannot download {hub_id}: {_first_line(e)}") from e
    path = Path(root) / folder
    if not path.is_dir():
        raise CheckpointError(f"{hub_id}: the repository has no folder {folder!r}")
    return path


def in_cache(directory: str | Path) -> bool:
    """True when ``directory`` is a snapshot in a Hugging Face cache (``models--owner--name/snapshots/...``)."""
    parts = Path(directory).resolve().parts
    return any(a.startswith("models--") and b == "snapshots" for a, b in itertools.pairwise(parts))


def refuse_write(directory: str | Path, what: str) -> None:
    """A CheckpointError when ``directory`` is inside the Hugging Face cache: files written there would be
    mixed into a downloaded snapshot, shared by every user of that cache, and lost on the next download."""
    if in_cache(directory):
        raise CheckpointError(f"{directory} is a download in the Hugging Face cache, so {what} is not written "
                              "there; copy the model to a folder of your own first (`hf download OWNER/NAME "
                              "--local-dir DIR`) and use DIR")


def _library():
    try:
        import huggingface_hub as hf
        import huggingface_hub.errors
    except ImportError as e:
        raise CheckpointError("hf:// model ids need huggingface_hub: pip install 'vaekit[hub]'") from e
    if not hasattr(hf, "parse_hf_uri"):
        raise CheckpointError(f"hf:// model ids need huggingface_hub >= {MINIMUM} (found {hf.__version__}): "
                              "pip install -U 'vaekit[hub]'")
    return hf


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
