"""Request and response bodies of the HTTP API, with the limits every request is held to.

Unknown fields are refused (a misspelt ``temprature`` is an error, not a silently ignored option), numbers
are strict (``"3"`` is not 3; but 3.0 is 3, as JSON Schema's ``integer`` says) and finite (NaN and infinity are
refused), and every list has a maximum length, so one request's work is bounded before it reaches the model.

These are the bodies any vaekit server takes; ``contract`` narrows them to one model (its latent size, data
shape, labels, scores) in the OpenAPI schema that server publishes.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

MAX_BATCH = 256  # inputs, codes or samples per request
MAX_STEPS = 64  # points of an interpolation path
MAX_TEMPERATURE = 10.0
MAX_ABS_Z = 100.0  # latent codes live near N(0, I): |z| beyond 100 standard deviations is a mistake
MAX_LATENT = 4096
MAX_SEED = 2**53 - 1  # the largest integer every JSON parser reads exactly (JavaScript's MAX_SAFE_INTEGER)
MAX_LABEL_CHARS = 200
DEFAULT_MAX_BODY_BYTES = 8 * 2**20  # 256 MNIST images as JSON text take about 3 MB

Format = Literal["array", "png"]


def _integral(value: Any) -> Any:
    # JSON Schema's integer is any number with a zero fractional part, so 97.0 is one; "97" and true are not.
    return int(value) if isinstance(value, float) and value.is_integer() else value


Integer = Annotated[int, BeforeValidator(_integral), Field(strict=True)]


def _form_bool(value: Any) -> Any:
    # A multipart field is text: a JSON boolean travels as "true" or "false", and only these two mean one.
    if isinstance(value, str):
        if value not in ("true", "false"):
            raise ValueError(f"expected true or false, got {value[:40]!r}")
        return value == "true"
    return value


FormBool = Annotated[bool, BeforeValidator(_form_bool), Field(strict=True)]


def _score_name(value: str) -> str:
    if not re.fullmatch(r"elbo|recon|nll|kl|llr(>[1-9][0-9]?)?", value):
        raise ValueError(f"expected 'elbo', 'recon', 'nll', 'kl' or, for a hierarchy, 'llr>K' (K >= 1), "
                         f"got {value!r}")
    return value


Score = Annotated[str, Field(strict=True, max_length=16, description=(
    "elbo, recon, nll, kl, or for a hierarchy llr>K (llr = llr>1); /v1/info lists this model's scores")),
    AfterValidator(_score_name)]
Layers = Literal["top", "all"]
LabelName = Annotated[str, Field(strict=True, max_length=MAX_LABEL_CHARS)]
Label = Annotated[LabelName | None, Field(description="class name of a conditional model (one of /v1/info's labels); "
                                           "refused by an unconditional model")]
Coordinate = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-MAX_ABS_Z, le=MAX_ABS_Z)]
Code = Annotated[list[Coordinate], Field(min_length=1, max_length=MAX_LATENT)]
Inputs = Annotated[list[Any], Field(min_length=1, max_length=MAX_BATCH, description=(
    "inputs, each either a nested array of numbers of the model's data shape (data_shape in /v1/info) or, "
    "for an image model, a base64 PNG of its height and width (a data:image/png;base64, prefix is allowed)"))]
FormatField = Annotated[Format, Field(description="array: nested arrays of numbers; png: base64 PNG per image")]


class Request(BaseModel):
    """Base of all request bodies: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid")


class SampleRequest(Request):
    n: Integer = Field(16, ge=1, le=MAX_BATCH, description="number of samples")
    temperature: float = Field(1.0, strict=True, ge=0, le=MAX_TEMPERATURE, allow_inf_nan=False,
                               description="z ~ N(0, temperature^2 I)")
    # the bounds inside the optional type: outside it, pydantic writes them into the schema as unknown keys
    seed: Annotated[int, Field(strict=True, ge=0, le=MAX_SEED), BeforeValidator(_integral)] | None = Field(
        None, description="omitted: a fresh seed, returned")
    label: Label = None
    format: FormatField = "array"


class DecodeRequest(Request):
    z: list[Code] = Field(min_length=1, max_length=MAX_BATCH, description="latent codes, each of latent_dim numbers")
    label: Label = None
    format: FormatField = "array"


class EncodeRequest(Request):
    x: Inputs
    label: Label = None


class EncodeLayersRequest(EncodeRequest):
    layers: Layers = Field("top", description="a hierarchy: the top layer's posterior (default), or every layer's, "
                           "top first, each given the posterior means of the layers above")


class ReconstructRequest(EncodeRequest):
    format: FormatField = "array"


class InterpolateRequest(Request):
    x: list[Any] | None = Field(None, min_length=2, max_length=2, description="two inputs (as in /v1/encode)")
    z: list[Code] | None = Field(None, min_length=2, max_length=2, description="or two latent codes")
    steps: Integer = Field(10, ge=2, le=MAX_STEPS, description="points on the path, both ends included")
    method: Literal["lerp", "slerp"] = "lerp"
    label: Label = None
    format: FormatField = "array"

    @model_validator(mode="after")
    def _one_of_x_or_z(self) -> InterpolateRequest:
        if (self.x is None) == (self.z is None):
            raise ValueError("give exactly one of x (two inputs) or z (two latent codes)")
        return self


class ScoreRequest(EncodeRequest):
    method: Score | None = Field(None, description="elbo, recon, nll or (a hierarchy) llr>K; omitted: the stored "
                                 "threshold's score, else elbo")
    details: bool = Field(False, strict=True, description="also return reconstructions and per-pixel errors")
    format: FormatField = Field("array", description="format of the reconstructions when details is true")


class EncodeUploadFields(Request):
    """The text fields of /v1/encode/upload (its files are checked apart)."""

    label: Label = None


class ReconstructUploadFields(EncodeUploadFields):
    format: FormatField = "array"


class ScoreUploadFields(ReconstructUploadFields):
    method: Score | None = Field(None, description="as in /v1/score")
    details: FormBool = Field(False, description="true or false, as in /v1/score")


class ErrorItem(BaseModel):
    loc: list[str] = Field(description="where in the request, e.g. [\"body\", \"z\", \"0\"]")
    msg: str
    type: str


class ErrorResponse(BaseModel):
    """Every refusal: one message naming what was wrong; a request that fails validation also lists each fault."""

    detail: str
    errors: list[ErrorItem] | None = Field(None, description="each field at fault (422 from validation only)")


class ImagesResponse(BaseModel):
    x: list[Any] = Field(description="outputs in the requested format")
    format: Format
    shape: list[int] = Field(description="shape of the whole batch")


class SampleResponse(ImagesResponse):
    seed: int


class EncodeResponse(BaseModel):
    mu: list[list[float]] = Field(description="posterior means (N, latent_dim; with layers = all, the sum of the "
                                  "layers' sizes); for a flow posterior the flow applied to its base Gaussian's mean")
    logvar: list[list[float]] | None = Field(description="posterior log-variances, same shape; null for a "
                                             "posterior family without a closed-form variance (a flow)")


class InterpolateResponse(ImagesResponse):
    z: list[list[float]] = Field(description="the latent codes of the path (steps, latent_dim)")


class ThresholdInfo(BaseModel):
    value: float
    score: str
    n_samples: int
    rule: str


class ScoreResponse(BaseModel):
    scores: list[float] = Field(description="one anomaly score per input; higher is more anomalous")
    method: str
    flags: list[bool] | None = Field(description="score > threshold; null when no threshold for this score exists")
    threshold: ThresholdInfo | None
    reconstruction: list[Any] | None = None
    pixel_error: list[Any] | None = Field(None, description="each input's score contribution per pixel (feature)")


class ExamplesResponse(BaseModel):
    x: list[Any]
    format: Format
    labels: list[str] | None
    source: str


class MapResponse(BaseModel):
    points: list[list[float]] = Field(description="2-D coordinates of the examples' posterior means")
    labels: list[str] | None
    mean: list[float] = Field(description="a map point (u, v) is the code mean + u * axes[0] + v * axes[1]")
    axes: list[list[float]]
    axis_labels: list[str]


class InfoResponse(BaseModel):
    model_config = ConfigDict(extra="allow")

    data_shape: list[int]
    latent_dim: int
    likelihood: str
    conditional: bool
    labels: list[str] | None
    threshold: ThresholdInfo | None
    limits: dict[str, int | float]
