"""vaekit serve keeps the contract its OpenAPI schema states, checked on three models.

First the schema itself: each model's request schemas state its latent size, data shape and range, labels,
formats and scores, and every route declares the error answers the server sends. Then schemathesis with every
check (``schemathesis run --checks all``): through each model's own /openapi.json it sends requests the schema
allows (each must be answered 2xx) and requests it excludes (each must be answered 4xx), and checks every
answer's status, content type, headers and body against what the schema declares, that none is a 5xx, and that
undeclared methods get 405 with an Allow header. The servers are built in-process (no port) on small untrained
models: the contract does not depend on the weights.

Reproducible and bounded: generation is derandomized, with MAX_EXAMPLES per operation and phase;
benchmarks/serve_contract.py runs the same at length.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch

pytest.importorskip("schemathesis", reason="the contract test needs schemathesis: pip install -e '.[dev]'")

import jsonschema_rs
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import strategies as st
from PIL import Image

from vaekit import VAE, Config, anomaly
from vaekit.data.tabular import Standardizer
from vaekit.serve import create_app
from vaekit.serve.contract import PNG_FORMAT
from vaekit.serve.service import MAX_ABS_INPUT, Examples, ModelService

SIZE = 8  # every image model here takes 8x8 images, the size of the PNGs drawn below
LATENT = 3
LABELS = ["cat", "dog", "7"]
MEAN, STD = [0.0, 10.0, -3.0, 1e3, 0.5], [1.0, 2.0, 0.1, 50.0, 1.0]  # the table's standardization
MAX_EXAMPLES = 15
ERRORS = {"400", "405", "413", "422", "503"}


def png_bytes(pixels: bytes, mode: str) -> bytes:
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    a = np.frombuffer(pixels, dtype=np.uint8)[: SIZE * SIZE * channels].reshape(SIZE, SIZE, channels)
    out = io.BytesIO()
    Image.fromarray(a[:, :, 0] if channels == 1 else a, mode).save(out, format="PNG")
    return out.getvalue()


# What no JSON Schema can say, that a string or a file holds a PNG of the model's size, is said to schemathesis
# here: values of the format base64-png, and binary values (in this API: the uploaded files), are PNGs of 8x8
# pixels in any colour mode.
PNGS = st.builds(png_bytes, st.binary(min_size=SIZE * SIZE * 4, max_size=SIZE * SIZE * 4),
                 st.sampled_from(["L", "RGB", "RGBA"]))
schemathesis.openapi.format(PNG_FORMAT, PNGS.map(lambda b: base64.b64encode(b).decode("ascii")))
schemathesis.openapi.format("binary", PNGS)


def model(**overrides) -> VAE:
    torch.manual_seed(0)
    base = {"model.data_shape": [1, SIZE, SIZE], "model.likelihood": "bernoulli", "model.latent_dim": LATENT,
            "model.hidden": [16]}
    return VAE(Config().override({**base, **overrides}).model)


def image_service() -> ModelService:
    """An image model with examples (so /v1/examples and /v1/map answer 200) and a stored nll threshold (so an
    omitted score method means nll, with its smaller batch limit)."""
    x = torch.rand(24, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    examples = Examples(x, torch.arange(24) % 3, tuple(str(i % 3) for i in range(24)), "random images")
    return ModelService(model(), threshold=anomaly.Threshold(100.0, "nll", 1000, "a test threshold"),
                        examples=examples)


def table_service() -> ModelService:
    """A standardized table: each feature has its own range (mean +- MAX_ABS_INPUT standard deviations)."""
    m = model(**{"model.data_shape": [5], "model.likelihood": "gaussian"})
    return ModelService(m, preprocess=Standardizer(torch.tensor(MEAN), torch.tensor(STD)))


def conditional_service() -> ModelService:
    """A conditional two-layer hierarchy: labels, and the llr scores."""
    return ModelService(model(**{"model.conditional": True, "model.labels": LABELS,
                                 "model.lower_latent_dims": [2]}))


def transmittable(context, body) -> bool:
    """Whether a form body reaches the server as generated. A form sends an array as one part per item, so a
    text field whose value is an empty array is not sent at all: the server receives the same request without
    it. Schemathesis builds such negative bodies (an unknown field, or a field's type changed to array, with no
    items) without checking them against the schema, since they also carry files, and then reports the valid
    request that arrives as accepted invalid data; they are dropped. An empty files array stays: the server
    receives no file, and must refuse that."""
    operation = context.operation
    form = operation is not None and operation.path.endswith("/upload") and isinstance(body, dict)
    return not form or all(value != [] for key, value in body.items() if key != "files")


def contract(service: ModelService, max_examples: int = MAX_EXAMPLES, seed: int | None = None):
    """The schemathesis schema of ``service``'s server, with every check."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(service))
    # no example database: each run draws the same cases, whatever earlier runs found
    schema.config.generation.update(max_examples=max_examples, deterministic=seed is None, database="none")
    schema.config.checks.update(included_check_names=["all"])
    if seed is not None:
        schema.config.seed = seed
    schema.hook("filter_body")(transmittable)
    return schema


image_api = contract(image_service())
table_api = contract(table_service())
conditional_api = contract(conditional_service())


@image_api.parametrize()
def test_image_model_keeps_its_contract(case):
    case.call_and_validate()


@table_api.parametrize()
def test_table_model_keeps_its_contract(case):
    case.call_and_validate()


@conditional_api.parametrize()
def test_conditional_model_keeps_its_contract(case):
    case.call_and_validate()


# ---- what the schema states ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def openapi():
    """The OpenAPI document of each model's server."""
    docs = {}
    for name, make in (("image", image_service), ("table", table_service), ("conditional", conditional_service)):
        with TestClient(create_app(make())) as c:
            docs[name] = c.get("/openapi.json").json()
    return docs


def body(doc: dict, path: str) -> dict:
    """The JSON request body schema of POST ``path``, references resolved against the document."""
    content = doc["paths"][path]["post"]["requestBody"]["content"]
    schema = content.get("application/json", content.get("multipart/form-data"))["schema"]
    return {**schema, "components": doc["components"]}


def valid(schema: dict, instance) -> bool:
    return jsonschema_rs.Draft202012Validator(schema).is_valid(instance)


def test_codes_labels_formats_and_scores_are_the_models(openapi):
    image, cond = openapi["image"], openapi["conditional"]
    decode = body(image, "/v1/decode")
    code = image["components"]["schemas"]["DecodeRequest"]["properties"]["z"]["items"]
    assert code["minItems"] == code["maxItems"] == LATENT
    assert valid(decode, {"z": [[0.5] * LATENT]}) and not valid(decode, {"z": [[0.5] * (LATENT + 1)]})
    assert not valid(decode, {"z": [[0.5] * LATENT], "label": "cat"})  # unconditional: no label
    cond_sample = cond["components"]["schemas"]["SampleRequest"]
    assert cond_sample["properties"]["label"]["enum"] == LABELS and "label" in cond_sample["required"]
    assert valid(body(cond, "/v1/sample"), {"label": "dog"}) and not valid(body(cond, "/v1/sample"), {})
    table = openapi["table"]["components"]["schemas"]
    assert table["SampleRequest"]["properties"]["format"]["enum"] == ["array"]  # PNG carries images only
    assert image["components"]["schemas"]["SampleRequest"]["properties"]["format"]["enum"] == ["array", "png"]
    assert not valid(body(image, "/v1/sample"), {"seed": 1.5}) and valid(body(image, "/v1/sample"), {"seed": 97.0})
    score = body(cond, "/v1/score")
    x = [np.zeros((1, SIZE, SIZE)).tolist()]
    assert set(cond["components"]["schemas"]["ScoreRequest"]["properties"]["method"]["anyOf"][0]["enum"]) == {
        "elbo", "nll", "recon", "kl", "llr", "llr>1"}
    assert valid(score, {"x": x * 64, "label": "7", "method": "llr"})
    assert not valid(score, {"x": x * 65, "label": "7", "method": "llr"})  # the likelihood ratio's batch limit
    assert not valid(score, {"x": x * 17, "label": "7", "method": "nll"}) and valid(score, {"x": x * 17,
                                                                                             "label": "7"})
    assert not valid(body(image, "/v1/score"), {"x": x * 17})  # omitted: the stored threshold's score, nll


def test_inputs_have_the_data_shape_and_range(openapi):
    image = body(openapi["image"], "/v1/encode")
    x = np.full((1, SIZE, SIZE), 0.5)
    assert valid(image, {"x": [x.tolist(), "iVBORw0KGgo="]})
    assert not valid(image, {"x": [x[0].tolist()]})  # (8, 8) is not the data shape (1, 8, 8)
    assert not valid(image, {"x": [(x * 3).tolist()]})  # a bernoulli model takes values in [0, 1]
    table = body(openapi["table"], "/v1/encode")
    high = np.asarray(MEAN) + MAX_ABS_INPUT * np.asarray(STD)
    assert valid(table, {"x": [high.tolist()]}) and not valid(table, {"x": ["iVBORw0KGgo="]})
    for i in range(5):  # each feature's own range
        assert not valid(table, {"x": [(high + 1e3 * np.eye(5)[i] * np.asarray(STD)).tolist()]})
    with TestClient(create_app(table_service())) as c:  # the server draws the same line
        assert c.post("/v1/encode", json={"x": [high.tolist()]}).status_code == 200
        r = c.post("/v1/encode", json={"x": [(high + np.eye(5)[3] * 100).tolist()]})
        assert r.status_code == 422 and "x[0][3]" in r.json()["detail"] and "standard deviations" in r.json()["detail"]


def test_interpolate_takes_exactly_one_of_x_or_z(openapi):
    schema = body(openapi["image"], "/v1/interpolate")
    z = [[0.0] * LATENT] * 2
    x = [np.zeros((1, SIZE, SIZE)).tolist()] * 2
    assert valid(schema, {"z": z}) and valid(schema, {"x": x}) and valid(schema, {"x": None, "z": z})
    for bad in ({}, {"x": x, "z": z}, {"x": None, "z": None}, {"z": z[:1]}):
        assert not valid(schema, bad), bad


def test_uploads_need_files_and_exist_for_images_only(openapi):
    form = body(openapi["image"], "/v1/score/upload")
    assert "files" in form["required"] and form["properties"]["files"]["minItems"] == 1
    assert form["properties"]["files"]["maxItems"] == 16  # one limit for every method: nll's
    assert "label" not in form["properties"] and form["additionalProperties"] is False
    assert body(openapi["conditional"], "/v1/encode/upload")["properties"]["label"]["enum"] == LABELS
    assert not any(path.endswith("/upload") for path in openapi["table"]["paths"])


def test_every_route_declares_the_errors_it_sends(openapi):
    for doc in openapi.values():
        components = doc["components"]["schemas"]
        assert set(components["ErrorResponse"]["required"]) == {"detail"}
        for path, methods in doc["paths"].items():
            for method, op in methods.items():
                declared = set(op["responses"])
                assert declared >= ERRORS, (method, path, declared)
                for status in ERRORS:
                    ref = op["responses"][status]["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorResponse"), (path, status)
                assert op["responses"]["503"]["headers"]["Retry-After"]["required"] is True
                assert ("404" in declared) == (path in ("/v1/examples", "/v1/map")), (path, declared)
    assert "HTTPValidationError" not in openapi["image"]["components"]["schemas"]  # FastAPI's 422, never sent
