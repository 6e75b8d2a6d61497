"""The HTTP API of ``vaekit serve`` (FastAPI, versioned under ``/v1``) and the web page at ``/``.

``create_app`` builds the application without binding a port, so tests drive it with FastAPI's TestClient
and ``vaekit serve`` hands it to uvicorn. Bad input never answers 500: request bodies are capped in bytes
before they are parsed, validated by the pydantic models of ``schemas``, and checked against the model by
``service``, whose ``VaekitError`` messages go back to the client as they are.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from torch import Tensor

from vaekit import __version__
from vaekit.errors import ConfigError, DataError, VaekitError
from vaekit.model import VAE
from vaekit.serve import codec, schemas
from vaekit.serve.limits import BodyLimit
from vaekit.serve.service import DEFAULT_EXAMPLES, ModelService

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
# The page loads nothing from elsewhere: scripts, styles and images come from this server (or are data: URLs).
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; object-src 'none'",
                "Cache-Control": "no-cache"}
DESCRIPTION = ("A trained variational autoencoder over HTTP: sample, decode, encode, reconstruct, interpolate "
               "and score inputs for anomalies. Inputs are nested arrays of numbers or, for image models, "
               "base64 PNG; outputs come back as arrays or PNG (the `format` field). The web page is at `/`.")


def create_app(source: str | Path | VAE | ModelService, *, n_examples: int = DEFAULT_EXAMPLES,
               data_dir: str | None = None, device: str = "cpu",
               max_body_bytes: int = schemas.DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    """The application for a run directory, a model, or a ready ``ModelService``; the model is loaded once.

    From a directory the server also loads its anomaly threshold, its table standardization and the first
    ``n_examples`` test inputs of its dataset (0: none; a dataset that cannot be loaded is logged and skipped).
    """
    if max_body_bytes < 1:
        raise ConfigError(f"max_body_bytes must be positive, got {max_body_bytes}")
    if isinstance(source, ModelService):
        service = source
    elif isinstance(source, VAE):
        service = ModelService(source)
    else:
        service = ModelService.from_directory(source, n_examples, data_dir, device)
    limits = {"max_batch": schemas.MAX_BATCH, "max_steps": schemas.MAX_STEPS, "max_body_bytes": max_body_bytes,
              "max_temperature": schemas.MAX_TEMPERATURE, "max_abs_z": schemas.MAX_ABS_Z}
    app = FastAPI(title="vaekit", version=__version__, description=DESCRIPTION)
    app.state.service = service
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    add_error_handlers(app)
    app.include_router(api_router(service, limits))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    return app


def api_router(service: ModelService, limits: dict[str, float]) -> APIRouter:
    """The ``/v1`` routes. They are plain functions: FastAPI runs them in its thread pool, and the service
    serialises their use of the model."""
    r = APIRouter(prefix="/v1", tags=["v1"])

    @r.get("/info", response_model=schemas.InfoResponse)
    def info() -> dict[str, Any]:
        """The model: config, data shape, latent size, likelihood, labels, anomaly threshold, latent ranking."""
        return {**service.info(), "limits": limits}

    @r.post("/sample", response_model=schemas.SampleResponse)
    def sample(req: schemas.SampleRequest) -> dict[str, Any]:
        """``n`` decoded draws from the prior N(0, T^2 I), seeded (a fresh seed is drawn and returned if omitted)."""
        seed = req.seed if req.seed is not None else secrets.randbelow(2**31)
        return {**images(service.sample(req.n, req.temperature, seed, req.label), req.format), "seed": seed}

    @r.post("/decode", response_model=schemas.ImagesResponse)
    def decode(req: schemas.DecodeRequest) -> dict[str, Any]:
        """E[x|z] for each latent code."""
        return images(service.decode(req.z, req.label), req.format)

    @r.post("/encode", response_model=schemas.EncodeResponse)
    def encode(req: schemas.EncodeLayersRequest) -> dict[str, Any]:
        """The posterior q(z|x) of each input: mean and log-variance."""
        return encoded(*service.encode(req.x, req.label, req.layers))

    @r.post("/reconstruct", response_model=schemas.ImagesResponse)
    def reconstruct(req: schemas.ReconstructRequest) -> dict[str, Any]:
        """E[x|z = mu(x)] for each input."""
        return images(service.reconstruct(req.x, req.label), req.format)

    @r.post("/interpolate", response_model=schemas.InterpolateResponse)
    def interpolate(req: schemas.InterpolateRequest) -> dict[str, Any]:
        """The decoded path between two inputs' posterior means (or two codes), straight or along a great circle."""
        codes, x = service.interpolate(req.x, req.z, req.steps, req.method, req.label)
        return {**images(x, req.format), "z": codec.floats(codes, "the path")}

    @r.post("/score", response_model=schemas.ScoreResponse)
    def score(req: schemas.ScoreRequest) -> dict[str, Any]:
        """Anomaly scores; flags against the run's stored threshold when there is one for this score."""
        return scored(service.score(req.x, req.label, req.method, req.details), req.format)

    add_example_routes(r, service)
    add_upload_routes(r, service)
    return r


def add_example_routes(r: APIRouter, service: ModelService) -> None:
    """Test inputs of the run's dataset, and their latent map (404 when the server has none)."""

    @r.get("/examples", response_model=schemas.ExamplesResponse)
    def examples(n: Annotated[int, Query(ge=1, le=schemas.MAX_BATCH)] = 16,
                 fmt: Annotated[schemas.Format, Query(alias="format")] = "array") -> dict[str, Any]:
        """The first ``n`` test inputs of the run's dataset (404 when the server has none)."""
        ex = require_examples(service)
        x, names = service.example_inputs(n)
        return {"x": codec.to_payload(x, fmt), "format": fmt, "labels": None if names is None else list(names),
                "source": ex.source}

    @r.get("/map", response_model=schemas.MapResponse)
    def latent_map() -> dict[str, Any]:
        """The examples' posterior means on a 2-D map, and how a map point becomes a latent code."""
        ex = require_examples(service)
        m = service.map
        return {"points": m.points.tolist(), "labels": None if ex.names is None else list(ex.names),
                "mean": m.mean.tolist(), "axes": m.axes.tolist(), "axis_labels": list(m.axis_labels)}


Files = Annotated[list[UploadFile], File(description="one or more PNG files of the model's size")]
FormLabel = Annotated[str | None, Form(max_length=schemas.MAX_LABEL_CHARS)]
FormFormat = Annotated[schemas.Format, Form(alias="format")]


def add_upload_routes(r: APIRouter, service: ModelService) -> None:
    """Multipart twins of encode, reconstruct and score: PNG files instead of a JSON body."""

    @r.post("/encode/upload", response_model=schemas.EncodeResponse)
    def encode_upload(files: Files, label: FormLabel = None) -> dict[str, Any]:
        """/v1/encode for uploaded PNG files."""
        return encoded(*service.encode(read_uploads(files), label))

    @r.post("/reconstruct/upload", response_model=schemas.ImagesResponse)
    def reconstruct_upload(files: Files, label: FormLabel = None, fmt: FormFormat = "array") -> dict[str, Any]:
        """/v1/reconstruct for uploaded PNG files."""
        return images(service.reconstruct(read_uploads(files), label), fmt)

    @r.post("/score/upload", response_model=schemas.ScoreResponse)
    def score_upload(files: Files, label: FormLabel = None, method: Annotated[schemas.Score | None, Form()] = None,
                     details: Annotated[bool, Form()] = False, fmt: FormFormat = "array") -> dict[str, Any]:
        """/v1/score for uploaded PNG files."""
        return scored(service.score(read_uploads(files), label, method, details), fmt)


def read_uploads(files: list[UploadFile]) -> list[bytes]:
    """The bytes of each uploaded file (the body limit has already bounded their total size)."""
    if len(files) > schemas.MAX_BATCH:
        raise DataError(f"{len(files)} files uploaded; the limit is {schemas.MAX_BATCH} per request")
    return [f.file.read() for f in files]


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


async def vaekit_error(request: Request, exc: Exception) -> JSONResponse:
    status = 422 if isinstance(exc, (DataError, ConfigError)) else 400
    return JSONResponse({"detail": str(exc)}, status_code=status)


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error answering %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal server error (logged on the server)"}, status_code=500)
