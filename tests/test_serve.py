"""vaekit serve over HTTP (FastAPI's TestClient, no port): every endpoint, every kind of bad input, a fuzz loop.

Invariants rather than numbers: the API agrees with the library it wraps (encode, reconstruct, anomaly.score),
decode(mu(x)) is reconstruct(x), a PNG on the 8-bit grid is the same input as its array, the ends of an
interpolation are the inputs' codes, and no request, however malformed, gets a 5xx.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import random
import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image

import vaekit
from vaekit import anomaly
from vaekit.cli import main
from vaekit.errors import ConfigError
from vaekit.serve.limits import InFlightLimit, default_max_in_flight
from vaekit.serve.service import ModelService

pytest.importorskip("fastapi", reason="vaekit serve needs FastAPI: pip install -e '.[dev]'")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx: pip install -e '.[dev]'")

from fastapi.testclient import TestClient

from vaekit.serve import create_app

from conftest import digits_config, tiny_model

SHAPE = (1, 8, 8)
LATENT = 4
MAX_BODY = 256 * 1024  # small, so oversized bodies are cheap to send


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real digits run with a stored anomaly threshold."""
    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    result = vaekit.train(digits_config(), run)
    x_val = vaekit.load_data(result.config.data).val.x
    value = anomaly.threshold_from(anomaly.score(result.model, x_val), contamination=0.1)
    anomaly.save_threshold(run, anomaly.Threshold(value, "elbo", 10, "contamination 0.1 of the val split"))
    return run


@pytest.fixture(scope="module")
def client(run_dir):
    with TestClient(create_app(run_dir, n_examples=64, max_body_bytes=MAX_BODY)) as c:
        yield c


@pytest.fixture(scope="module")
def model(run_dir):
    return vaekit.load(run_dir)


@pytest.fixture(scope="module")
def cond_client(tmp_path_factory):
    run = tmp_path_factory.mktemp("cond")
    torch.manual_seed(0)
    vaekit.train(digits_config(**{"model.conditional": True, "train.epochs": 1}), run)
    with TestClient(create_app(run, n_examples=32)) as c:
        yield c


@pytest.fixture(scope="module")
def table_client():
    """A table model given as a model object: no config file, no threshold, no examples."""
    torch.manual_seed(0)
    with TestClient(create_app(tiny_model("gaussian", shape=(5,)))) as c:
        yield c


def digits(n: int = 3) -> np.ndarray:
    """Test inputs on the 8-bit grid k/255, so a PNG carries them exactly."""
    return np.random.default_rng(0).integers(0, 256, (n, *SHAPE)) / 255.0


def png_b64(a: np.ndarray) -> str:
    """A (1, H, W) array in [0, 1] as base64 PNG."""
    out = io.BytesIO()
    Image.fromarray(np.rint(a[0] * 255).astype(np.uint8), "L").save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def ok(response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


# ---- endpoints ---------------------------------------------------------------------------------------------

def test_info_describes_the_model_and_its_threshold(client):
    info = ok(client.get("/v1/info"))
    assert info["data_shape"] == list(SHAPE) and info["latent_dim"] == LATENT
    assert info["likelihood"] == "bernoulli" and info["conditional"] is False and info["labels"] is None
    assert info["threshold"]["score"] == "elbo" and math.isfinite(info["threshold"]["value"])
    assert sorted(info["latent_ranking"]["dims"]) == list(range(LATENT))
    kl = info["latent_ranking"]["kl"]
    assert [kl[d] for d in info["latent_ranking"]["dims"]] == sorted(kl, reverse=True)
    assert info["examples"] == 64 and info["image"] is True and info["support"] == [0, 1]
    assert info["config"]["data"]["dataset"] == "digits" and info["limits"]["max_body_bytes"] == MAX_BODY


def test_sample_is_seeded_and_comes_as_arrays_or_png(client):
    a = ok(client.post("/v1/sample", json={"n": 5, "seed": 3}))
    assert a["shape"] == [5, *SHAPE] and a["seed"] == 3 and np.asarray(a["x"]).shape == (5, *SHAPE)
    assert ok(client.post("/v1/sample", json={"n": 5, "seed": 3}))["x"] == a["x"]
    assert ok(client.post("/v1/sample", json={"n": 5, "seed": 4}))["x"] != a["x"]
    p = ok(client.post("/v1/sample", json={"n": 2, "seed": 3, "format": "png"}))
    im = Image.open(io.BytesIO(base64.b64decode(p["x"][0])))
    assert (im.format, im.size, im.mode) == ("PNG", (8, 8), "L")
    fresh = ok(client.post("/v1/sample", json={}))
    assert len(fresh["x"]) == 16 and isinstance(fresh["seed"], int)
    as_floats = ok(client.post("/v1/sample", json={"n": 5.0, "seed": 3.0}))  # JSON Schema's integers: 3.0 is one
    assert as_floats["x"] == a["x"] and as_floats["seed"] == 3


def test_temperature_zero_decodes_the_origin(client):
    out = ok(client.post("/v1/sample", json={"n": 3, "temperature": 0, "seed": 1}))
    origin = ok(client.post("/v1/decode", json={"z": [[0.0] * LATENT]}))
    np.testing.assert_allclose(out["x"], origin["x"] * 3, atol=1e-6)


def test_encode_decode_reconstruct_agree_with_the_model(client, model):
    x = digits()
    enc = ok(client.post("/v1/encode", json={"x": x.tolist()}))
    qz = model.encode(torch.tensor(x, dtype=torch.float32))
    np.testing.assert_allclose(enc["mu"], qz.mean.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(enc["logvar"], (2 * qz.stddev.log()).detach().numpy(), atol=1e-4)
    dec = ok(client.post("/v1/decode", json={"z": enc["mu"]}))
    rec = ok(client.post("/v1/reconstruct", json={"x": x.tolist()}))
    np.testing.assert_allclose(dec["x"], rec["x"], atol=1e-5)  # decode(mu(x)) is the reconstruction


def test_png_input_is_the_same_input_as_its_array(client):
    x = digits(2)
    as_array = ok(client.post("/v1/reconstruct", json={"x": x.tolist()}))
    as_png = ok(client.post("/v1/reconstruct", json={"x": [png_b64(x[0]), "data:image/png;base64," + png_b64(x[1])]}))
    np.testing.assert_allclose(as_png["x"], as_array["x"], atol=1e-5)
    files = [("files", (f"{i}.png", base64.b64decode(png_b64(x[i])), "image/png")) for i in range(2)]
    uploaded = ok(client.post("/v1/reconstruct/upload", files=files))
    np.testing.assert_allclose(uploaded["x"], as_array["x"], atol=1e-5)
    enc = ok(client.post("/v1/encode/upload", files=files))
    assert np.asarray(enc["mu"]).shape == (2, LATENT)


@pytest.mark.parametrize("method", ["lerp", "slerp"])
def test_interpolation_runs_between_the_inputs_codes(client, method):
    x = digits(2)
    mu = np.asarray(ok(client.post("/v1/encode", json={"x": x.tolist()}))["mu"])
    out = ok(client.post("/v1/interpolate", json={"x": x.tolist(), "steps": 5, "method": method}))
    z = np.asarray(out["z"])
    assert z.shape == (5, LATENT) and out["shape"] == [5, *SHAPE]
    np.testing.assert_allclose(z[[0, -1]], mu, atol=1e-5)
    by_code = ok(client.post("/v1/interpolate", json={"z": mu.tolist(), "steps": 5, "method": method,
                                                      "format": "png"}))
    np.testing.assert_allclose(by_code["z"], z, atol=1e-5)
    assert len(by_code["x"]) == 5 and isinstance(by_code["x"][0], str)


def test_scores_are_anomaly_scores_flagged_against_the_stored_threshold(client, model, run_dir):
    x = np.concatenate([digits(3), np.ones((1, *SHAPE))])  # noise and an all-white square
    out = ok(client.post("/v1/score", json={"x": x.tolist()}))
    expected = anomaly.score(model, torch.tensor(x, dtype=torch.float32))
    np.testing.assert_allclose(out["scores"], expected.numpy(), rtol=1e-5)
    threshold = anomaly.load_threshold(run_dir)
    assert out["method"] == "elbo" and out["threshold"]["value"] == pytest.approx(threshold.value)
    assert out["flags"] == [s > threshold.value for s in out["scores"]]
    recon = ok(client.post("/v1/score", json={"x": x.tolist(), "method": "recon", "details": True}))
    assert recon["flags"] is None and recon["threshold"] is None  # the stored threshold is for elbo scores
    heat = np.asarray(recon["pixel_error"])
    assert heat.shape == (4, 8, 8) and (heat >= 0).all()
    np.testing.assert_allclose(heat.sum((1, 2)), recon["scores"], rtol=1e-4)  # the map sums to the score
    assert np.asarray(recon["reconstruction"]).shape == (4, *SHAPE)
    files = [("files", ("a.png", base64.b64decode(png_b64(x[0])), "image/png"))]
    up = ok(client.post("/v1/score/upload", files=files, data={"details": "true", "format": "png"}))
    assert up["scores"][0] == pytest.approx(out["scores"][0], rel=1e-5) and isinstance(up["reconstruction"][0], str)
    nll = ok(client.post("/v1/score", json={"x": x[:2].tolist(), "method": "nll"}))
    assert all(math.isfinite(s) for s in nll["scores"])


def test_examples_and_the_latent_map(client):
    ex = ok(client.get("/v1/examples", params={"n": 4}))
    x = np.asarray(ex["x"])
    assert x.shape == (4, *SHAPE) and len(ex["labels"]) == 4 and "digits test split" in ex["source"]
    pngs = ok(client.get("/v1/examples", params={"n": 2, "format": "png"}))
    assert all(isinstance(s, str) for s in pngs["x"])
    m = ok(client.get("/v1/map"))
    assert np.asarray(m["points"]).shape == (64, 2) and np.asarray(m["axes"]).shape == (2, LATENT)
    mu = np.asarray(ok(client.post("/v1/encode", json={"x": x.tolist()}))["mu"])
    projected = (mu - np.asarray(m["mean"])) @ np.asarray(m["axes"]).T  # a map point is a code's projection
    np.testing.assert_allclose(projected, np.asarray(m["points"])[:4], atol=1e-4)


def test_page_and_openapi(client):
    page = client.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    for element in ('id="new-samples"', 'id="temperature"', 'id="draw-canvas"', 'id="latent-map"', "app.js"):
        assert element in page.text
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
        assert "http://" not in client.get(f"/static/{name}").text  # nothing from elsewhere: works offline
        assert "https://" not in client.get(f"/static/{name}").text
    assert "https://" not in page.text and "http://" not in page.text
    paths = ok(client.get("/openapi.json"))["paths"]
    for path in ("/v1/info", "/v1/sample", "/v1/decode", "/v1/encode", "/v1/reconstruct", "/v1/interpolate",
                 "/v1/score", "/v1/examples", "/v1/map", "/v1/score/upload"):
        assert path in paths


def test_conditional_model_needs_one_of_its_labels(cond_client):
    info = ok(cond_client.get("/v1/info"))
    assert info["conditional"] and info["labels"] == [str(d) for d in range(10)]
    a = ok(cond_client.post("/v1/sample", json={"n": 4, "seed": 0, "label": "3"}))
    b = ok(cond_client.post("/v1/sample", json={"n": 4, "seed": 0, "label": "8"}))
    assert a["x"] != b["x"]
    x = digits(2).tolist()
    for path, body in [("/v1/sample", {"n": 2}), ("/v1/decode", {"z": [[0.0] * LATENT]}), ("/v1/encode", {"x": x}),
                       ("/v1/reconstruct", {"x": x}), ("/v1/score", {"x": x})]:
        r = cond_client.post(path, json=body)
        assert r.status_code == 422 and "conditional: give a label" in r.json()["detail"], (path, r.text)
        r = cond_client.post(path, json={**body, "label": "seven"})
        assert r.status_code == 422 and "unknown label 'seven'" in r.json()["detail"], (path, r.text)
        ok(cond_client.post(path, json={**body, "label": "7"}))
    seven = ok(cond_client.post("/v1/score", json={"x": x, "label": "7"}))["scores"]
    one = ok(cond_client.post("/v1/score", json={"x": x, "label": "1"}))["scores"]
    assert seven != one  # the score is p(x|y): the label matters
    ok(cond_client.post("/v1/interpolate", json={"x": x, "label": "2"}))
    assert len(ok(cond_client.get("/v1/map"))["points"]) == 32


def test_table_model_takes_arrays_only(table_client):
    info = ok(table_client.get("/v1/info"))
    assert info["data_shape"] == [5] and info["image"] is False and info["examples"] == 0
    ok(table_client.post("/v1/score", json={"x": [[0.1, -2.0, 3.0, 0.0, 1e3]], "details": True}))
    d = info["latent_dim"]
    refused = [("/v1/sample", {"n": 2}), ("/v1/decode", {"z": [[0.0] * d]}), ("/v1/reconstruct", {"x": [[0.0] * 5]}),
               ("/v1/interpolate", {"z": [[0.0] * d, [1.0] * d]}),
               ("/v1/score", {"x": [[0.0] * 5]})]  # score: whatever details says
    for path, body in refused:  # refused as the request is read, the field named
        r = table_client.post(path, json={**body, "format": "png"})
        assert r.status_code == 422 and [e["loc"] for e in r.json()["errors"]] == [["body", "format"]], path
        assert "format png needs image data" in r.json()["detail"], path
        assert table_client.post(path, json={**body, "format": "array"}).status_code == 200, path
    assert table_client.post("/v1/score/upload", files=[("files", ("a.png", b"", "image/png"))]).status_code == 404
    r = table_client.post("/v1/encode", json={"x": [png_b64(digits(1)[0])]})
    assert r.status_code == 422 and "data has shape (5,)" in r.json()["detail"]
    assert table_client.get("/v1/examples").status_code == 404
    assert table_client.get("/v1/map").status_code == 404


def test_concurrent_requests_give_the_answers_of_sequential_ones(model):
    service = ModelService(model)
    expected = service.sample(4, 1.0, seed=7)
    results, errors = [], []

    def work():
        try:
            for _ in range(5):
                results.append(service.sample(4, 1.0, seed=7))
                service.score(digits(2).tolist())
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 30 and all(torch.equal(r, expected) for r in results)


# ---- bad input ---------------------------------------------------------------------------------------------

GOOD_X = digits(1).tolist()
BAD = [
    # (path, raw body or JSON object, status, fragment of the message)
    ("/v1/sample", b'{"n": 2,', 422, "JSON decode error"),
    ("/v1/sample", b"[1, 2]", 422, "valid dictionary"),
    ("/v1/sample", b'{"temperature": NaN}', 422, "finite"),
    ("/v1/sample", b'{"temperature": Infinity}', 422, "finite"),
    ("/v1/sample", {"n": "3"}, 422, "valid integer"),
    ("/v1/sample", {"n": 2.5}, 422, "valid integer"),
    ("/v1/sample", {"seed": 2**53}, 422, "less than or equal to 9007199254740991"),
    ("/v1/sample", {"n": True}, 422, "valid integer"),
    ("/v1/sample", {"n": 10**30}, 422, "less than or equal to 256"),
    ("/v1/sample", {"n": 0}, 422, "greater than or equal to 1"),
    ("/v1/sample", {"temperature": 1e308}, 422, "less than or equal to 10"),
    ("/v1/sample", {"temperature": -1}, 422, "greater than or equal to 0"),
    ("/v1/sample", {"seed": -5}, 422, "greater than or equal to 0"),
    ("/v1/sample", {"format": "gif"}, 422, "'array' or 'png'"),
    ("/v1/sample", {"n": 2, "temprature": 1}, 422, "Extra inputs are not permitted"),
    ("/v1/sample", {"label": "3"}, 422, "not conditional"),
    ("/v1/sample", {"label": 3}, 422, "valid string"),
    ("/v1/decode", {"z": [[0.0] * 3]}, 422, "expected (1, 4)"),
    ("/v1/decode", {"z": [[0.0] * 4, [0.0] * 3]}, 422, "not a rectangular array"),
    ("/v1/decode", {"z": [[1e300] * 4]}, 422, "less than or equal to 100"),
    ("/v1/decode", b'{"z": [[NaN, 0, 0, 0]]}', 422, "finite"),
    ("/v1/decode", {"z": [["a", 0, 0, 0]]}, 422, "valid number"),
    ("/v1/decode", {"z": []}, 422, "at least 1 item"),
    ("/v1/decode", {"z": [[0.0] * 4]} | {"label": "x"}, 422, "not conditional"),
    ("/v1/encode", {}, 422, "x: Field required"),
    ("/v1/encode", {"x": "abc"}, 422, "valid list"),
    ("/v1/encode", {"x": [[[0.5] * 8] * 8]}, 422, "shape (8, 8), expected (1, 8, 8)"),
    ("/v1/encode", {"x": [[[[0.5] * 8] * 8]] * 257}, 422, "at most 256 items"),
    ("/v1/encode", {"x": [[[[0.5] * 8] * 7 + [[0.5] * 3]]]}, 422, "not a rectangular array"),
    ("/v1/encode", {"x": [[[["0.5"] * 8] * 8]]}, 422, "numbers only, got strings"),
    ("/v1/encode", {"x": [[[[True] * 8] * 8]]}, 422, "numbers only, got booleans"),
    ("/v1/encode", {"x": [[[[0.5] * 7 + [False]] + [[0.5] * 8] * 7]]}, 422, "numbers only, got booleans"),
    ("/v1/sample", b'{"label": "\xff\xfe"}', 400, "not UTF-8 text"),
    ("/v1/encode", b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "nests too deeply"),
    ("/v1/encode", {"x": [[[[None] * 8] * 8]]}, 422, "numbers only"),
    ("/v1/encode", {"x": [[[[10**400] * 8] * 8]]}, 422, "numbers only"),
    ("/v1/encode", {"x": [[[[1e300] * 8] * 8]]}, 422, "float32"),
    ("/v1/encode", b'{"x": [[[' + b",".join([b"[" + b",".join([b"NaN"] * 8) + b"]"] * 8) + b"]]]}", 422, "NaN"),
    ("/v1/encode", {"x": [[[[2.0] * 8] * 8]]}, 422, "needs x in [0, 1]"),
    ("/v1/encode", {"x": ["not base64!!"]}, 422, "not valid base64"),
    ("/v1/encode", {"x": [base64.b64encode(b"hello, not a png").decode()]}, 422, "not a readable PNG"),
    ("/v1/encode", {"x": [png_b64(np.zeros((1, 16, 16)))]}, 422, "16x16 PNG; the model takes 8x8"),
    ("/v1/encode", {"x": [png_b64(np.zeros(SHAPE))[:60]]}, 422, "PNG"),
    ("/v1/reconstruct", {"x": GOOD_X, "format": "jpeg"}, 422, "'array' or 'png'"),
    ("/v1/interpolate", {"x": GOOD_X * 2, "z": [[0.0] * 4] * 2}, 422, "exactly one of x"),
    ("/v1/interpolate", {"x": GOOD_X}, 422, "at least 2 items"),
    ("/v1/interpolate", {"z": [[0.0] * 4] * 2, "steps": 1}, 422, "greater than or equal to 2"),
    ("/v1/interpolate", {"z": [[0.0] * 4] * 2, "steps": 10**6}, 422, "less than or equal to 64"),
    ("/v1/interpolate", {"z": [[0.0] * 4] * 2, "method": "cubic"}, 422, "'lerp' or 'slerp'"),
    ("/v1/score", {"x": GOOD_X, "method": "magic"}, 422, "'elbo', 'recon', 'nll', 'kl' or, for a hierarchy, 'llr>K'"),
    ("/v1/score", {"x": GOOD_X * 17, "method": "nll"}, 422, "at most 16 inputs"),
    ("/v1/score", {"x": GOOD_X, "details": "yes"}, 422, "valid boolean"),
]


@pytest.mark.parametrize(("path", "body", "status", "message"), BAD, ids=[f"{p}-{i}" for i, (p, *_) in enumerate(BAD)])
def test_bad_input_is_a_4xx_that_says_what_was_wrong(client, path, body, status, message):
    if isinstance(body, bytes):
        r = client.post(path, content=body, headers={"Content-Type": "application/json"})
    else:
        r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"], r.json()


def test_oversized_bodies_are_refused_before_parsing(client):
    big = b'{"x": [' + b"0," * MAX_BODY + b"0]}"
    r = client.post("/v1/encode", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and f"limit is {MAX_BODY} bytes" in r.json()["detail"]

    def chunks():  # no Content-Length: the cap is enforced while reading
        for _ in range(MAX_BODY // 1000 + 2):
            yield b" " * 1000

    r = client.post("/v1/encode", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "over the limit" in r.json()["detail"]
    upload = [("files", ("big.png", b"\x89PNG" + bytes(MAX_BODY), "image/png"))]
    assert client.post("/v1/score/upload", files=upload).status_code == 413


def test_other_http_errors(client):
    assert client.get("/v1/nothing").status_code == 404
    assert client.get("/v1/sample").status_code == 405
    r = client.post("/v1/sample", content=b"n=3", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 422
    r = client.post("/v1/score/upload", files=[("files", ("a.png", b"GIF89a", "image/png"))])
    assert r.status_code == 422 and "file 0 is not a readable PNG" in r.json()["detail"]
    r = client.post("/v1/score/upload", data={"label": "3"})
    assert r.status_code == 422 and "files" in r.json()["detail"]
    assert client.get("/v1/examples", params={"n": 0}).status_code == 422
    assert client.get("/v1/examples", params={"n": 10, "format": "bmp"}).status_code == 422
    r = client.delete("/v1/sample")
    assert r.status_code == 405 and r.headers["allow"] == "POST" and r.json()["detail"] == "Method Not Allowed"


def test_upload_forms_are_checked_like_json_bodies(client):
    png = base64.b64decode(png_b64(digits(1)[0]))
    files = [("files", ("a.png", png, "image/png"))]
    for data, fragment in [({"detials": "true"}, "body.detials: Extra inputs are not permitted"),
                           ({"details": "yes"}, "body.details: Value error, expected true or false, got 'yes'"),
                           ({"label": "3"}, "not conditional"), ({"method": "magic"}, "'elbo', 'recon', 'nll'")]:
        r = client.post("/v1/score/upload", files=files, data=data)
        assert r.status_code == 422 and fragment in r.json()["detail"], (data, r.text)
    r = client.post("/v1/score/upload", files=files * 17)  # one limit for every method: the costliest score's
    assert r.status_code == 422 and "17 files uploaded; this route takes at most 16" in r.json()["detail"]
    r = client.post("/v1/encode/upload", files=[("files", (None, "not a file", "text/plain"))])
    assert r.status_code == 422 and "body.files: must be a file (PNG), not a text field" in r.json()["detail"]
    assert len(ok(client.post("/v1/encode/upload", files=files * 17))["mu"]) == 17


def _random_json(rng: random.Random, depth: int = 0):
    """A random JSON-ish value: numbers of every size, NaN, strings, nulls, deep or ragged nesting."""
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return rng.choice([0, 1, -1, 2**64, -(10**40), 256, 257, 1e308, -1e-320, float("nan"), float("inf")])
    if kind == 1:
        return rng.uniform(-1e6, 1e6)
    if kind == 2:
        return rng.choice(["", "png", "lerp", "3", "array", "data:image/png;base64,AAAA", "\u00e9" * 50, "NaN"])
    if kind == 3:
        return rng.choice([None, True, False])
    if kind == 4:
        return [rng.random() for _ in range(rng.choice([0, 1, 3, 4, 8, 64]))]
    if kind == 5:
        return {}
    if kind == 6:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 7:
        return [[[[rng.random()] * 8] * 8]] * rng.randrange(1, 3) + [_random_json(rng, depth + 1)]
    keys = ["n", "temperature", "seed", "label", "format", "x", "z", "steps", "method", "details", "junk"]
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randrange(1, 4))}


def _random_body(rng: random.Random) -> bytes:
    choice = rng.randrange(4)
    if choice == 0:  # arbitrary bytes
        return bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
    if choice == 1:  # JSON cut short
        text = json.dumps(_random_json(rng))
        return text[: rng.randrange(len(text) + 1)].encode()
    if choice == 2:  # deep nesting
        d = rng.choice([50, 500, 5000])
        return b'{"x": ' + b"[" * d + b"]" * d + b"}"
    return json.dumps({"x": GOOD_X, **dict.fromkeys(["n"], 2)} if rng.random() < 0.1 else _random_json(rng)).encode()


def _parses(body: bytes) -> bool:
    try:
        json.loads(body)
    except (ValueError, RecursionError):
        return False
    return True


def test_fuzz_malformed_bodies_never_get_a_5xx(client):
    rng = random.Random(0)
    paths = ["/v1/sample", "/v1/decode", "/v1/encode", "/v1/reconstruct", "/v1/interpolate", "/v1/score"]
    counts: dict[int, int] = {}
    for _ in range(400):
        body = _random_body(rng)
        r = client.post(rng.choice(paths), content=body, headers={"Content-Type": "application/json"})
        counts[r.status_code] = counts.get(r.status_code, 0) + 1
        assert r.status_code < 500, r.text
        assert r.status_code == 200 or "detail" in r.json()
        if r.status_code == 200:  # only a request body can succeed: a JSON object
            assert isinstance(json.loads(body), dict), body[:200]
        elif not _parses(body):  # what is not JSON at all is refused as such, not half-read
            assert r.status_code in (400, 422), (r.status_code, body[:200])
    assert set(counts) - {200} and all(400 <= k < 500 for k in set(counts) - {200}), counts
    assert ok(client.get("/v1/info"))["latent_dim"] == LATENT  # still up


# ---- requests in flight ------------------------------------------------------------------------------------

def test_requests_beyond_the_cap_get_503_until_one_finishes(model):
    """Two requests held inside the model: the third is answered 503 at once, with Retry-After; once they are
    released both complete, and the next request goes through."""
    service = ModelService(model)
    inside, release, real_sample = threading.Semaphore(0), threading.Event(), service.sample

    def held_sample(*args, **kwargs):
        inside.release()
        assert release.wait(timeout=60)
        return real_sample(*args, **kwargs)

    service.sample = held_sample
    with TestClient(create_app(service, max_in_flight=2)) as c:
        assert ok(c.get("/v1/info"))["limits"]["max_in_flight"] == 2
        answers = []
        held = [threading.Thread(target=lambda: answers.append(c.post("/v1/sample", json={"n": 1, "seed": 0})))
                for _ in range(2)]
        for t in held:
            t.start()
        assert inside.acquire(timeout=60) and inside.acquire(timeout=60)  # both are in the model now
        for r in (c.post("/v1/sample", json={"n": 1}), c.get("/v1/info")):  # every request counts
            assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
            assert r.json()["detail"] == "the server is busy: 2 requests are in flight, the most it serves at once; " \
                                         "retry in 1 s"
        release.set()
        for t in held:
            t.join(timeout=60)
        assert [r.status_code for r in answers] == [200, 200]
        assert ok(c.post("/v1/sample", json={"n": 1, "seed": 0}))["x"] == answers[0].json()["x"]


def test_the_cap_answers_before_reading_the_body():
    """The 503 comes before the body is read, so a refused request never has its body buffered."""
    scope = {"type": "http", "method": "POST", "path": "/v1/encode", "headers": [(b"content-length", b"8388608")]}
    entered, leave, answers = asyncio.Event(), asyncio.Event(), []

    async def slow_app(scope, receive, send):
        entered.set()
        await leave.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def body():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def must_not_read():
        raise AssertionError("the refused request's body was read")

    async def record(message):
        answers.append(message)

    async def scenario():
        limit = InFlightLimit(slow_app, max_in_flight=1)
        first = asyncio.create_task(limit(scope, body, record))
        await entered.wait()
        await limit(scope, must_not_read, record)
        assert answers[0]["status"] == 503 and (b"retry-after", b"1") in answers[0]["headers"]
        assert (b"connection", b"close") not in answers[0]["headers"]  # the server drops the body, then reuses
        leave.set()
        await first
        assert answers[-2]["status"] == 200 and limit.in_flight == 0

    asyncio.run(scenario())


def test_the_default_cap_fits_maximum_size_bodies_in_a_memory_budget(model):
    assert default_max_in_flight(8 * 2**20) == 8  # 8 x 16 x 8 MiB = 1 GiB at the measured peak cost
    assert default_max_in_flight(2**20) == 40 and default_max_in_flight(2**30) == 2  # thread pool; a floor
    with TestClient(create_app(model)) as c:
        assert ok(c.get("/v1/info"))["limits"]["max_in_flight"] == 8
    with TestClient(create_app(model, max_in_flight=0)) as c:  # 0: no cap
        assert ok(c.get("/v1/info"))["limits"]["max_in_flight"] == 0
    with pytest.raises(ConfigError, match="max_in_flight must be >= 0"):
        create_app(model, max_in_flight=-1)


# ---- the command ---------------------------------------------------------------------------------------------

def test_serve_command_without_the_web_framework_says_what_to_install(run_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn now raises ImportError
    assert main(["serve", str(run_dir)]) == 2
    assert "pip install 'vaekit[serve]'" in capsys.readouterr().err


def test_serve_command_checks_its_flags(run_dir, capsys):
    assert main(["serve", str(run_dir), "--port", "70000"]) == 2
    assert "--port must lie in 0..65535" in capsys.readouterr().err
    assert main(["serve", str(run_dir), "--max-in-flight", "-1"]) == 2
    assert "--max-in-flight must be >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "loopback" in capsys.readouterr().out


def test_serve_command_builds_the_app_and_listens_on_loopback(run_dir, monkeypatch, capsys):
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(app=app, **kwargs))
    assert main(["serve", str(run_dir), "--port", "8123", "--examples", "0", "--max-in-flight", "3"]) == 0
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 8123)
    assert "http://127.0.0.1:8123/" in capsys.readouterr().err
    with TestClient(seen["app"]) as c:
        info = ok(c.get("/v1/info"))
        assert info["examples"] == 0 and info["limits"]["max_in_flight"] == 3
