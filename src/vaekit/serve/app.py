"""The HTTP API of ``vaekit serve`` (FastAPI, versioned under ``/v1``) and the web page at ``/``.

``create_app`` builds the application without binding a port, so tests drive it with FastAPI's TestClient
and ``vaekit serve`` hands it to uvicorn. Bad input never answers 500: requests beyond a cap on how many are
served at once are answered 503 before their bodies are read, bodies are capped in bytes before they are
parsed, validated by the pydantic models of ``schemas``, and checked against the model by ``service``, whose
``VaekitError`` messages go back to the client as they are. The OpenAPI schema at ``/openapi.json`` states
this model's constraints (``contract``) and every status the server sends, with the body it sends.
"""

# No ``from __future__ import annotations`` here: the routes' body types are built per served model inside
# ``api_router``, and FastAPI resolves string annotations in the module's globals only, where they are not.

import dataclasses
import logging
import secrets
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from torch import Tensor

from vaekit import __version__
from vaekit.errors import ConfigError, DataError, VaekitError
from vaekit.model import VAE
from vaekit.serve import codec, schemas
from vaekit.serve.contract import Contract, RequestModels, upload_body, upload_limit
from vaekit.serve.limits import BodyLimit, InFlightLimit, default_max_in_flight
from vaekit.serve.service import DEFAULT_EXAMPLES, ModelService

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
# The page loads nothing from elsewhere: scripts, styles and images come from this server (or are data: URLs).
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; object-src 'none'",
                "Cache-Control": "no-cache"}
DESCRIPTION = ("A trained variational autoencoder over HTTP: sample, decode, encode, reconstruct, interpolate "
               "and score inputs for anomalies. Inputs are nested arrays of numbers or, for image models, "
               "base64 PNG; outputs come back as arrays or PNG (the `format` field). The request schemas state "
               "this model's constraints (latent size, data shape and range, labels, scores). The web page is "
               "at `/`.")


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"model": schemas.ErrorResponse, "description": description, **({"headers": headers} if headers else {})}


# Every status the API sends besides 200, each with an ErrorResponse body; declared once, for every route.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("the body cannot be parsed: not UTF-8, JSON nested too deeply, malformed multipart, or a "
                "Content-Length that is not a number"),
    405: _error("this path does not take this method", {"Allow": {
        "description": "the methods it takes", "required": True, "schema": {"type": "string"}}}),
    413: _error("the body is over the size limit (limits.max_body_bytes in /v1/info)"),
    422: _error("the request does not fit the schema or the model: detail names what was wrong; a request "
                "that fails validation also lists each field at fault in errors"),
    503: _error("the server is serving as many requests as it takes at once (limits.max_in_flight in "
                "/v1/info); retry later", {"Retry-After": {
                    "description": "seconds to wait", "required": True, "schema": {"type": "integer"}}}),
}
NO_EXAMPLES: dict[int | str, dict[str, Any]] = {
    404: _error("this server has no examples: the run's dataset was not available at start")}


def create_app(source: str | Path | VAE | ModelService, *, n_examples: int = DEFAULT_EXAMPLES,
               data_dir: str | None = None, device: str = "cpu",
               max_body_bytes: int = schemas.DEFAULT_MAX_BODY_BYTES, max_in_flight: int | None = None) -> FastAPI:
    """The application for a run directory, a model, or a ready ``ModelService``; the model is loaded once.

    From a directory the server also loads its anomaly threshold, its table standardization and the first
    ``n_examples`` test inputs of its dataset (0: none; a dataset that cannot be loaded is logged and skipped).
    At most ``max_in_flight`` requests are served at once, the next answered 503 (None: as many maximum-size
    bodies as ``limits.default_max_in_flight`` fits in memory; 0: no cap).
    """
    if max_body_bytes < 1:
        raise ConfigError(f"max_body_bytes must be positive, got {max_body_bytes}")
    max_in_flight = default_max_in_flight(max_body_bytes) if max_in_flight is None else max_in_flight
    if max_in_flight < 0:
        raise ConfigError(f"max_in_flight must be >= 0 (0: no cap), got {max_in_flight}")
    if isinstance(source, ModelService):
        service = source
    elif isinstance(source, VAE):
        service = ModelService(source)
    else:
        service = ModelService.from_directory(source, n_examples, data_dir, device)
    limits = {"max_batch": schemas.MAX_BATCH, "max_steps": schemas.MAX_STEPS, "max_body_bytes": max_body_bytes,
              "max_temperature": schemas.MAX_TEMPERATURE, "max_abs_z": schemas.MAX_ABS_Z,
              "max_in_flight": max_in_flight}
    app = FastAPI(title="vaekit", version=__version__, description=DESCRIPTION)
    app.state.service = service
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    if max_in_flight:  # added last, so outermost: it refuses before BodyLimit buffers a body
        app.add_middleware(InFlightLimit, max_in_flight=max_in_flight)
    add_error_handlers(app)
    app.include_router(api_router(service, limits))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    return app


def api_router(service: ModelService, limits: dict[str, float]) -> APIRouter:
    """The ``/v1`` routes, with this model's request schemas. Most are plain functions: FastAPI runs them in its
    thread pool, and the service serialises their use of the model."""
    r = APIRouter(prefix="/v1", tags=["v1"], responses=ERROR_RESPONSES)
    models = RequestModels.build(Contract.of(service))

    @r.get("/info", response_model=schemas.InfoResponse)
    def info() -> dict[str, Any]:
        """The model: config, data shape, latent size, likelihood, labels, anomaly threshold, latent ranking."""
        return {**service.info(), "limits": limits}

    add_generative_routes(r, service, models)
    add_input_routes(r, service, models)
    add_example_routes(r, service)
    if service.is_image:  # the uploads are PNG files: they exist for image models only
        add_upload_routes(r, service, models)
    return r


def add_generative_routes(r: APIRouter, service: ModelService, models: RequestModels) -> None:
    """Sample, decode and interpolate."""

    @r.post("/sample", response_model=schemas.SampleResponse)
    def sample(req: models.sample) -> dict[str, Any]:
        """``n`` decoded draws from the prior N(0, T^2 I), seeded (a fresh seed is drawn and returned if omitted)."""
        seed = req.seed if req.seed is not None else secrets.randbelow(2**31)
        return {**images(service.sample(req.n, req.temperature, seed, req.label), req.format), "seed": seed}

    @r.post("/decode", response_model=schemas.ImagesResponse)
    def decode(req: models.decode) -> dict[str, Any]:
        """E[x|z] for each latent code."""
        return images(service.decode(req.z, req.label), req.format)

    @r.post("/interpolate", response_model=schemas.InterpolateResponse)
    def interpolate(req: models.interpolate) -> dict[str, Any]:
        """The decoded path between two inputs' posterior means (or two codes), straight or along a great circle."""
        codes, x = service.interpolate(req.x, req.z, req.steps, req.method, req.label)
        return {**images(x, req.format), "z": codec.floats(codes, "the path")}


def add_input_routes(r: APIRouter, service: ModelService, models: RequestModels) -> None:
    """Encode, reconstruct and score inputs."""

    @r.post("/encode", response_model=schemas.EncodeResponse)
    def encode(req: models.encode) -> dict[str, Any]:
        """The posterior q(z|x) of each input: mean and log-variance."""
        return encoded(*service.encode(req.x, req.label, req.layers))

    @r.post("/reconstruct", response_model=schemas.ImagesResponse)
    def reconstruct(req: models.reconstruct) -> dict[str, Any]:
        """E[x|z = mu(x)] for each input."""
        return images(service.reconstruct(req.x, req.label), req.format)

    @r.post("/score", response_model=schemas.ScoreResponse)
    def score(req: models.score) -> dict[str, Any]:
        """Anomaly scores; flags against the run's stored threshold when there is one for this score."""
        return scored(service.score(req.x, req.label, req.method, req.details), req.format)


def add_example_routes(r: APIRouter, service: ModelService) -> None:
    """Test inputs of the run's dataset, and their latent map (404 when the server has none)."""
    formats = Literal[("array", "png") if service.is_image else ("array",)]  # type: ignore[valid-type]

    @r.get("/examples", response_model=schemas.ExamplesResponse, responses=NO_EXAMPLES)
    def examples(n: Annotated[int, Query(ge=1, le=schemas.MAX_BATCH)] = 16,
                 fmt: Annotated[formats, Query(alias="format")] = "array") -> dict[str, Any]:
        """The first ``n`` test inputs of the run's dataset (404 when the server has none)."""
        ex = require_examples(service)
        x, names = service.example_inputs(n)
        return {"x": codec.to_payload(x, fmt), "format": fmt, "labels": None if names is None else list(names),
                "source": ex.source}

    @r.get("/map", response_model=schemas.MapResponse, responses=NO_EXAMPLES)
    def latent_map() -> dict[str, Any]:
        """The examples' posterior means on a 2-D map, and how a map point becomes a latent code."""
        ex = require_examples(service)
        m = service.map
        return {"points": m.points.tolist(), "labels": None if ex.names is None else list(ex.names),
                "mean": m.mean.tolist(), "axes": m.axes.tolist(), "axis_labels": list(m.axis_labels)}


def add_upload_routes(r: APIRouter, service: ModelService, models: RequestModels) -> None:
    """Multipart twins of encode, reconstruct and score: PNG files instead of a JSON body. The form is read
    here rather than by FastAPI's File/Form parameters, so that its schema can be this model's (see
    ``contract.upload_body``) and unknown fields are refused, as in the JSON bodies."""
    forms, contract = models.uploads, models.contract
    answers = {"encode": schemas.EncodeResponse, "reconstruct": schemas.ImagesResponse, "score": schemas.ScoreResponse}
    most = {"encode": schemas.MAX_BATCH, "reconstruct": schemas.MAX_BATCH, "score": upload_limit(contract)}

    def route(name: str) -> Any:
        body = {"requestBody": upload_body(contract, forms[name], most[name])}
        return r.post(f"/{name}/upload", response_model=answers[name], openapi_extra=body)

    @route("encode")
    async def encode_upload(request: Request) -> dict[str, Any]:
        """/v1/encode for uploaded PNG files."""
        files, f = await read_form(request, forms["encode"])
        return encoded(*await run_in_threadpool(service.encode, files, f.label))

    @route("reconstruct")
    async def reconstruct_upload(request: Request) -> dict[str, Any]:
        """/v1/reconstruct for uploaded PNG files."""
        files, f = await read_form(request, forms["reconstruct"])
        return images(await run_in_threadpool(service.reconstruct, files, f.label), f.format)

    @route("score")
    async def score_upload(request: Request) -> dict[str, Any]:
        """/v1/score for uploaded PNG files (at most as many as the model's costliest score takes)."""
        files, f = await read_form(request, forms["score"], most["score"])
        return scored(await run_in_threadpool(service.score, files, f.label, f.method, f.details), f.format)


async def read_form(request: Request, fields: type[BaseModel],
                    max_files: int = schemas.MAX_BATCH) -> tuple[list[bytes], Any]:
    """The uploaded files' bytes (the body limit has already bounded their total size) and the text fields,
    validated by ``fields``; a 422 names each part at fault."""
    files, text, faults = [], {}, []
    async with request.form() as form:  # closes the uploads' temporary files
        for key, value in form.multi_items():
            if key == "files":
                if isinstance(value, UploadFile):
                    files.append(await value.read())
                else:
                    faults.append(_fault(key, "must be a file (PNG), not a text field", "file_type"))
            elif isinstance(value, UploadFile) or key in text:
                faults.append(_fault(key, "must be one text field, not a file or a repeated field", "form_field"))
            else:
                text[key] = value
    if not files and not faults:
        faults.append(_fault("files", "Field required: upload one or more PNG files", "missing"))
    if len(files) > max_files:
        faults.append(_fault("files", f"{len(files)} files uploaded; this route takes at most {max_files}", "too_long"))
    try:
        parsed = fields.model_validate(text)
    except ValidationError as e:
        faults += [{**err, "loc": ("body", *err["loc"])} for err in e.errors()]
    if faults:
        raise RequestValidationError(faults)
    return files, parsed


def _fault(field: str, msg: str, kind: str) -> dict[str, Any]:
    return {"loc": ("body", field), "msg": msg, "type": kind}


def require_examples(service: ModelService) -> Any:
    if service.examples is None or service.map is None:
        raise HTTPException(404, "this server has no examples: the run's dataset was not available at start")
    return service.examples


def images(x: Tensor, fmt: str) -> dict[str, Any]:
    return {"x": codec.to_payload(x, fmt), "format": fmt, "shape": list(x.shape)}


def encoded(mu: Tensor, logvar: Tensor | None) -> dict[str, Any]:
    return {"mu": codec.floats(mu, "the posterior mean"),
            "logvar": None if logvar is None else codec.floats(logvar, "the posterior log-variance")}


def scored(out: dict[str, Any], fmt: str) -> dict[str, Any]:
    t = out["threshold"]
    d = {"scores": codec.floats(out["scores"], "the anomaly score"), "method": out["method"],
         "flags": None if out["flags"] is None else out["flags"].tolist(),
         "threshold": None if t is None else dataclasses.asdict(t)}
    if "pixel_error" in out:
        d["pixel_error"] = codec.floats(out["pixel_error"], "the per-pixel error")
        d["reconstruction"] = codec.to_payload(out["reconstruction"], fmt)
    return d


def add_error_handlers(app: FastAPI) -> None:
    """vaekit's errors become 422 (input that does not fit the model) or 400; anything else is logged as 500."""
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(VaekitError, vaekit_error)
    app.add_exception_handler(Exception, internal_error)


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each field at fault. The offending input is not echoed: it may be huge, or NaN, which JSON
    cannot carry (FastAPI's default handler would then fail with a 500)."""
    errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": _message(e), "type": str(e.get("type", ""))}
              for e in exc.errors()[:20]]
    detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors[:5])
    return JSONResponse({"detail": detail or "invalid request", "errors": errors}, status_code=422)


def _message(error: dict[str, Any]) -> str:
    msg = str(error.get("msg", "invalid"))
    ctx = error.get("ctx") or {}
    if error.get("type") == "json_invalid" and "error" in ctx:
        msg += f" ({ctx['error']})"
    return msg


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """404, 405 (with its Allow header) and 400; a body FastAPI could not parse gets its cause named."""
    detail = exc.detail
    if exc.status_code == 400 and exc.__cause__ is not None:
        detail = unparsable(exc.__cause__)
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)


def unparsable(cause: BaseException) -> str:
    """Why a request body could not be parsed, in words."""
    if isinstance(cause, UnicodeDecodeError):
        return f"the request body is not UTF-8 text ({cause.reason} at byte {cause.start})"
    if isinstance(cause, RecursionError):
        return "the JSON body nests too deeply to parse"
    return f"the request body cannot be parsed ({type(cause).__name__}: {cause})"


async def vaekit_error(request: Request, exc: Exception) -> JSONResponse:
    status = 422 if isinstance(exc, (DataError, ConfigError)) else 400
    return JSONResponse({"detail": str(exc)}, status_code=status)


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error answering %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal server error (logged on the server)"}, status_code=500)
