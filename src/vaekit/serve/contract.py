"""What one served model accepts, stated in the OpenAPI schema its server publishes.

``schemas`` holds the bodies any vaekit server takes. A served model takes less: latent codes of its size,
inputs of its data shape and range, one of its labels (or none at all), PNG only for images, the anomaly
scores it has, and fewer inputs per request for the costly ones. ``RequestModels.build`` subclasses each body
for one model and writes these constraints into its JSON schema, so a client, or a schema-driven tester,
knows them before sending. The checks themselves stay in ``ModelService`` and ``codec``, whose messages name
what was wrong; tests/test_serve_contract.py holds the two to agreement (schemathesis: a request the schema
allows is answered 2xx, one it excludes 4xx).

What JSON Schema cannot say, that a string or an uploaded file holds a PNG of the model's size, or that a
logistic model's pixels lie on the 8-bit grid, is said in words (and by the format ``base64-png``) and
answered 422.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator

from vaekit import anomaly
from vaekit.serve import codec, schemas
from vaekit.serve.service import ModelService

JsonSchema = dict[str, Any]
# A custom format: base64 text of a PNG file (a data:image/png;base64, prefix is allowed). No pattern beside
# it: a pattern could not say "a PNG" either, and schema-driven generators would draw from it, not the format.
PNG_FORMAT = "base64-png"
NULL: JsonSchema = {"type": "null"}


@dataclass(frozen=True)
class Contract:
    """The facts about one model that its request schemas state."""

    latent_dim: int
    data_shape: tuple[int, ...]
    image: bool
    labels: tuple[str, ...] | None  # a conditional model's labels; None: the model takes no label
    batch_limits: dict[str, int]  # every spelling of every score the model has -> most inputs per request
    default_score: str  # what an omitted method means
    bounds: codec.Bounds  # the range of each input value, in data units

    @classmethod
    def of(cls, service: ModelService) -> Contract:
        """The contract of the model ``service`` serves."""
        cfg, layers = service.model.config, len(service.model.layers)
        scores = [*anomaly.available_scores(layers), *(["llr"] if layers > 1 else [])]  # llr is llr>1
        limits = {s: service.batch_limit(s) or schemas.MAX_BATCH for s in scores}
        labels = tuple(cfg.labels or ()) if cfg.conditional else None
        return cls(cfg.latent_dim, tuple(service.data_shape), service.is_image, labels, limits,
                   service.score_name(None), service.bounds)


# ---- pieces of schema ------------------------------------------------------------------------------------


def values(low: np.ndarray, high: np.ndarray) -> JsonSchema:
    """Nested arrays of exactly the shape of ``low`` (= ``high``'s) with each number in its [low, high]."""
    if low.ndim == 0:
        return {"type": "number", "minimum": float(low), "maximum": float(high)}
    out: JsonSchema = {"type": "array", "minItems": len(low), "maxItems": len(low)}
    if (low == low[0]).all() and (high == high[0]).all():
        out["items"] = values(low[0], high[0])
    else:  # a standardized table: a range per feature
        out["prefixItems"] = [values(lo, hi) for lo, hi in zip(low, high, strict=True)]
        out["items"] = False
    return out


def input_schema(c: Contract) -> JsonSchema:
    """One input: an array of the data shape within the model's range or, for images, a base64 PNG."""
    low, high = (np.broadcast_to(np.asarray(b, dtype=np.float64), c.data_shape) for b in (c.bounds.low,
                                                                                            c.bounds.high))
    array = {**values(low, high), "description": f"an array of shape {list(c.data_shape)}, values in "
             f"{_range(c.bounds)} ({c.bounds.why})"}
    if not c.image:
        return array
    png = {"type": "string", "format": PNG_FORMAT,
           "description": f"a base64 PNG of {c.data_shape[2]}x{c.data_shape[1]} pixels (any colour mode)"}
    return {"anyOf": [array, png]}


def _range(b: codec.Bounds) -> str:
    lo, hi = np.asarray(b.low), np.asarray(b.high)
    return f"[{lo.item():g}, {hi.item():g}]" if lo.ndim == 0 else "a range per feature"


def code_schema(c: Contract) -> JsonSchema:
    """One latent code: exactly latent_dim numbers within +-MAX_ABS_Z."""
    return {"type": "array", "minItems": c.latent_dim, "maxItems": c.latent_dim,
            "items": {"type": "number", "minimum": -schemas.MAX_ABS_Z, "maximum": schemas.MAX_ABS_Z}}


def batch(item: JsonSchema, low: int, high: int, description: str) -> JsonSchema:
    """A list of ``low`` to ``high`` items."""
    return {"type": "array", "items": item, "minItems": low, "maxItems": high, "description": description}


def label_schema(c: Contract) -> JsonSchema:
    """One of a conditional model's labels (required); for an unconditional model, nothing but null."""
    if c.labels is None:
        return {**NULL, "description": "this model is not conditional: no label (null or omitted)"}
    return {"type": "string", "enum": list(c.labels), "description": "the class to condition on (required)"}


def format_schema(c: Contract, description: str) -> JsonSchema:
    """array, and for an image model png."""
    formats = ["array", "png"] if c.image else ["array"]  # PNG carries images only
    return {"type": "string", "enum": formats, "default": "array", "description": description}


# ---- the request bodies ----------------------------------------------------------------------------------


def refine(c: Contract, schema: JsonSchema, batch_key: str = "x") -> None:
    """Narrow a generic body's JSON schema to the model: its labels, formats, inputs, codes and scores."""
    props, required = schema["properties"], schema.setdefault("required", [])
    if "label" in props:
        props["label"] = label_schema(c)
        if c.labels is not None:
            required.append("label")
    if "format" in props:
        props["format"] = format_schema(c, props["format"].get("description", ""))
    if "x" in props:
        props["x"] = batch(input_schema(c), 1, schemas.MAX_BATCH, "the inputs, one per item")
    if "z" in props:
        props["z"] = batch(code_schema(c), 1, schemas.MAX_BATCH, f"latent codes of {c.latent_dim} numbers each")
    if "method" in props and "details" in props:  # a score's method (an interpolation's is lerp or slerp)
        refine_method(c, schema, batch_key)


def refine_method(c: Contract, schema: JsonSchema, batch_key: str) -> None:
    """The model's scores, and for each the most inputs one request may score (nll: 16, llr: 64)."""
    scores = {"type": "string", "enum": list(c.batch_limits), "description": schemas.ScoreRequest.model_fields[
        "method"].description}
    default = c.batch_limits.get(c.default_score)
    if batch_key == "files":  # a form: one limit on its files, see upload_limit
        schema["properties"]["method"] = scores
        return
    schema["properties"]["method"] = {"anyOf": [scores, NULL], "default": None} if default else scores
    by_limit: dict[int, list[str]] = {}
    for score, most in c.batch_limits.items():
        by_limit.setdefault(most, []).append(score)
    branches: list[JsonSchema] = [
        {"properties": {"method": {"enum": names}, batch_key: {"maxItems": most}}, "required": ["method"]}
        for most, names in sorted(by_limit.items())]
    if default:  # an omitted method is the default score: its limit applies
        branches.append({"properties": {"method": NULL, batch_key: {"maxItems": default}}})
    else:
        schema["required"].append("method")
    schema["anyOf"] = branches


def upload_limit(c: Contract) -> int:
    """The most files /v1/score/upload takes: the limit of the model's costliest score, whatever the method.

    One limit rather than one per method as in the JSON body: a form cannot send null, and a limit that
    depends on another field needs alternatives (anyOf) in the schema, which schema-driven testers cannot
    check on bodies that carry files."""
    return min(c.batch_limits.values())


def refine_interpolate(c: Contract, schema: JsonSchema) -> None:
    """Exactly one of two inputs x or two codes z (the other omitted or null)."""
    refine(c, schema)
    props = schema["properties"]
    props["x"] = {"anyOf": [batch(input_schema(c), 2, 2, "two inputs, as in /v1/encode"), NULL]}
    props["z"] = {"anyOf": [batch(code_schema(c), 2, 2, "or two latent codes"), NULL]}
    schema["oneOf"] = [{"required": [key], "properties": {key: {"type": "array"}, other: NULL}}
                       for key, other in (("x", "z"), ("z", "x"))]


def upload_body(c: Contract, fields: type[BaseModel], max_files: int = schemas.MAX_BATCH) -> JsonSchema:
    """The OpenAPI request body of a multipart route: 1 to ``max_files`` PNG ``files`` and the text ``fields``."""
    schema = fields.model_json_schema()
    props = schema["properties"]
    if c.labels is None:  # a form cannot send null: no label means no label field
        props.pop("label", None)
    files = {"type": "string", "format": "binary", "description": "a PNG file of the model's height and width"}
    props["files"] = batch(files, 1, max_files, "one or more PNG files")
    schema["required"] = [*schema.get("required", []), "files"]
    # each file goes as a file part (with a filename): a part without one is a text field, not a file
    disposition = {"description": "a file part", "schema": {"type": "string"},
                   "example": 'form-data; name="files"; filename="image.png"'}
    encoding = {"files": {"contentType": "image/png", "headers": {"Content-Disposition": disposition}}}
    return {"required": True, "content": {"multipart/form-data": {"schema": schema, "encoding": encoding}}}


def _subclass(base: type[BaseModel], edit: Callable[[JsonSchema], None], checks: dict[str, Any] | None = None) -> Any:
    # A subclass per served model: the same fields and checks (and ``checks``, validators), with this model's schema.
    return type(base.__name__, (base,), {"model_config": ConfigDict(json_schema_extra=edit),
                                         "__module__": base.__module__, "__doc__": base.__doc__, **(checks or {})})


def _format_check(c: Contract, base: type[BaseModel]) -> dict[str, Any]:
    """For a model whose data are not images, a validator refusing format png (whether or not the request makes
    images): the value is checked where it enters, as the schema's enum says."""
    if c.image or "format" not in base.model_fields:
        return {}

    def array_only(cls: type, fmt: str) -> str:
        if fmt == "png":
            raise ValueError(f"format png needs image data, but this model's data has shape {c.data_shape}; "
                             "ask for format array")
        return fmt

    return {"format_for_this_model": field_validator("format")(array_only)}


@dataclass(frozen=True)
class RequestModels:
    """The request bodies of one served model."""

    sample: Any
    decode: Any
    encode: Any
    reconstruct: Any
    interpolate: Any
    score: Any
    uploads: dict[str, Any]  # route -> its text fields
    contract: Contract

    @classmethod
    def build(cls, c: Contract) -> RequestModels:
        def narrowed(base: type[BaseModel], batch_key: str = "x") -> Any:
            return _subclass(base, lambda schema: refine(c, schema, batch_key), _format_check(c, base))

        uploads = {"encode": narrowed(schemas.EncodeUploadFields, "files"),
                   "reconstruct": narrowed(schemas.ReconstructUploadFields, "files"),
                   "score": narrowed(schemas.ScoreUploadFields, "files")}
        return cls(narrowed(schemas.SampleRequest), narrowed(schemas.DecodeRequest),
                   narrowed(schemas.EncodeLayersRequest), narrowed(schemas.ReconstructRequest),
                   _subclass(schemas.InterpolateRequest, lambda schema: refine_interpolate(c, schema),
                             _format_check(c, schemas.InterpolateRequest)),
                   narrowed(schemas.ScoreRequest), uploads, c)
