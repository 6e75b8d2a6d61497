// vaekit serve: the latent-space explorer. Plain JavaScript, no build step and no third-party code; it talks
// only to this server's /v1 API. Every element it updates has a stable id and a data-version counter that
// goes up on each update, so tests (and curious readers) can tell when something changed.
"use strict";

const $ = (id) => document.getElementById(id);
const SAMPLES = 16;
const SLIDERS = 8;
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
  "#bcbd22", "#17becf"];

const state = {
  info: null, // GET /v1/info
  label: null, // the class a conditional model decodes with
  seed: null, // the sample grid's seed: kept when the temperature moves, dropped by "New samples"
  z: [], // the latent code the sliders edit
  picks: [null, null], // base64 PNGs of interpolation ends A and B
  nextPick: 0,
  map: null, // GET /v1/map, plus the view bounds
  drawn: false,
};

// ---- plumbing -------------------------------------------------------------------------------------------

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(`${path}: ${data.detail || response.statusText}`);
  return data;
}

const withLabel = (body) => (state.info.conditional ? { ...body, label: state.label } : body);
const pngUrl = (b64) => `data:image/png;base64,${b64}`;

function bump(el) {
  el.dataset.version = String(Number(el.dataset.version || 0) + 1);
}

function showError(err) {
  const status = $("status");
  status.textContent = err.message;
  status.className = "error";
}

function image(b64, className, alt) {
  const img = new Image();
  img.src = pngUrl(b64);
  img.className = className;
  img.alt = alt;
  return img;
}

// Run `task` at most once at a time; calls that arrive meanwhile collapse into one more run with the latest
// state, so dragging a slider never queues a backlog of requests.
function coalesce(task) {
  let running = false;
  let again = false;
  return async function trigger() {
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      do {
        again = false;
        await task();
      } while (again);
    } catch (err) {
      showError(err);
    } finally {
      running = false;
    }
  };
}

// An image canvas (or file) as a base64 PNG of the model's size, on black (the data's background).
function canvasToModelPng(source) {
  const [, h, w] = state.info.data_shape;
  const small = Object.assign(document.createElement("canvas"), { width: w, height: h });
  const ctx = small.getContext("2d");
  ctx.fillStyle = "black";
  ctx.fillRect(0, 0, w, h);
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(source, 0, 0, w, h);
  return small.toDataURL("image/png").split(",")[1];
}

async function fileToModelPng(file) {
  return canvasToModelPng(await createImageBitmap(file));
}

// ---- the model ------------------------------------------------------------------------------------------

function describeModel() {
  const info = state.info;
  const latent = info.layers.length > 1
    ? `latent ${info.layers.join("/")} (${info.layers.length} layers, top first)` : `latent ${info.latent_dim}`;
  const parts = [`data ${info.data_shape.join("×")}`, latent, `${info.likelihood} likelihood`];
  if (info.conditional) parts.push(`conditional on ${info.labels.length} labels`);
  if (info.threshold) parts.push(`anomaly threshold ${info.threshold.value.toFixed(2)} (${info.threshold.score})`);
  $("model-summary").textContent = parts.join(" · ");
}

function setupLabels(onChange) {
  if (!state.info.conditional) return;
  const select = $("label-select");
  select.replaceChildren(...state.info.labels.map((name) => new Option(name, name)));
  state.label = state.info.labels[0];
  $("label-control").hidden = false;
  select.addEventListener("change", () => {
    state.label = select.value;
    onChange();
  });
}

// ---- samples --------------------------------------------------------------------------------------------

async function drawSamples() {
  const body = withLabel({ n: SAMPLES, temperature: Number($("temperature").value), format: "png" });
  if (state.seed !== null) body.seed = state.seed;
  const out = await api("/v1/sample", body);
  state.seed = out.seed;
  const grid = $("sample-grid");
  grid.replaceChildren(...out.x.map((b64, i) => image(b64, "cell", `sample ${i + 1}`)));
  grid.dataset.seed = String(out.seed);
  bump(grid);
}

function setupSamples() {
  const refresh = coalesce(drawSamples);
  const slider = $("temperature");
  slider.addEventListener("input", () => {
    $("temperature-value").textContent = Number(slider.value).toFixed(2);
    refresh();
  });
  $("new-samples").addEventListener("click", () => {
    state.seed = null;
    refresh();
  });
  return refresh;
}

// ---- latent sliders -------------------------------------------------------------------------------------

function sliderRow(dim, kl) {
  const row = document.createElement("label");
  row.className = "slider-row";
  const name = document.createElement("span");
  name.textContent = kl === null ? `z[${dim}]` : `z[${dim}] (KL ${kl.toFixed(2)})`;
  const input = Object.assign(document.createElement("input"), {
    type: "range", min: "-3", max: "3", step: "0.05", value: "0", id: `latent-${dim}`, className: "latent-slider",
  });
  input.dataset.dim = String(dim);
  const value = Object.assign(document.createElement("output"), { id: `latent-${dim}-value`, textContent: "0.00" });
  row.append(name, input, value);
  return row;
}

async function decodeLatent() {
  const out = await api("/v1/decode", withLabel({ z: [state.z], format: "png" }));
  const img = $("latent-image");
  img.src = pngUrl(out.x[0]);
  bump(img);
}

function setupLatent() {
  const { latent_dim: size, latent_ranking: ranking } = state.info;
  const dims = ranking.dims.slice(0, Math.min(SLIDERS, size));
  state.z = new Array(size).fill(0);
  $("ranking-note").textContent = ranking.kl
    ? `The ${dims.length} most informative of ${size} dimensions, by ${ranking.ranked_by}; the others stay at 0.`
    : `${dims.length} of ${size} dimensions, by ${ranking.ranked_by}; the others stay at 0.`;
  const box = $("latent-sliders");
  box.replaceChildren(...dims.map((d) => sliderRow(d, ranking.kl ? ranking.kl[d] : null)));
  const refresh = coalesce(decodeLatent);
  box.addEventListener("input", (event) => {
    const input = event.target;
    state.z[Number(input.dataset.dim)] = Number(input.value);
    $(`${input.id}-value`).textContent = Number(input.value).toFixed(2);
    refresh();
  });
  $("latent-reset").addEventListener("click", () => {
    box.querySelectorAll("input").forEach((input) => {
      input.value = "0";
      $(`${input.id}-value`).textContent = "0.00";
    });
    state.z.fill(0);
    refresh();
  });
  return refresh;
}

// ---- drawing, reconstruction, anomaly score -------------------------------------------------------------

function heatColour(t) {
  // black -> red -> yellow -> white, the "hot" colour map
  return [3 * t, 3 * t - 1, 3 * t - 2].map((c) => Math.round(255 * Math.min(1, Math.max(0, c))));
}

function drawHeatmap(rows) {
  const canvas = $("draw-heatmap");
  const h = rows.length;
  const w = rows[0].length;
  const flat = rows.flat();
  const lo = flat.reduce((a, b) => Math.min(a, b), Infinity);
  const hi = flat.reduce((a, b) => Math.max(a, b), -Infinity);
  const span = hi - lo || 1;
  Object.assign(canvas, { width: w, height: h });
  const ctx = canvas.getContext("2d");
  const pixels = ctx.createImageData(w, h);
  flat.forEach((v, i) => pixels.data.set([...heatColour((v - lo) / span), 255], 4 * i));
  ctx.putImageData(pixels, 0, 0);
  $("heatmap-caption").textContent = `per-pixel error, ${lo.toFixed(2)} (black) to ${hi.toFixed(2)} (white)`;
}

function showScore(out) {
  const score = out.scores[0];
  const el = $("draw-score");
  el.dataset.score = String(score);
  el.textContent = `${out.method} anomaly score: ${score.toFixed(2)}`;
  const flag = $("draw-flag");
  if (out.threshold) {
    const anomalous = out.flags[0];
    flag.dataset.flag = String(anomalous);
    flag.className = anomalous ? "anomalous" : "normal";
    flag.textContent = `${anomalous ? "anomalous" : "normal"}: threshold ${out.threshold.value.toFixed(2)} `
      + `(${out.threshold.rule})`;
  } else {
    flag.dataset.flag = "none";
    flag.className = "";
    flag.textContent = "No threshold is stored with this model (vaekit anomaly DIR --contamination 0.05 fits one).";
  }
  bump(el);
}

async function scoreDrawing() {
  const x = [canvasToModelPng($("draw-canvas"))];
  const method = $("draw-method").value;
  const out = await api("/v1/score", withLabel({ x, details: true, format: "png", method }));
  $("draw-recon").src = pngUrl(out.reconstruction[0]);
  drawHeatmap(out.pixel_error[0]);
  showScore(out);
}

function setupDraw() {
  const canvas = $("draw-canvas");
  const ctx = canvas.getContext("2d");
  const [, , w] = state.info.data_shape;
  const clear = () => {
    ctx.fillStyle = "black";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
  };
  clear();
  Object.assign(ctx, { strokeStyle: "white", lineCap: "round", lineJoin: "round" });
  ctx.lineWidth = Math.max(6, (2.2 * canvas.width) / w); // about two model pixels, like a pen stroke in MNIST
  const score = coalesce(scoreDrawing);
  const methods = $("draw-method");
  // the scores this model has (llr>K only for a hierarchy); the stored threshold's score first
  const first = state.info.threshold ? state.info.threshold.score : "elbo";
  const names = [first, ...state.info.scores.filter((name) => name !== first)];
  methods.replaceChildren(...names.map((name) => new Option(name, name)));
  methods.addEventListener("change", () => (state.drawn ? score() : undefined));
  const at = (event) => {
    const r = canvas.getBoundingClientRect();
    return [((event.clientX - r.left) * canvas.width) / r.width, ((event.clientY - r.top) * canvas.height) / r.height];
  };
  let drawing = false;
  canvas.addEventListener("pointerdown", (event) => {
    drawing = true;
    canvas.setPointerCapture(event.pointerId);
    ctx.beginPath();
    ctx.moveTo(...at(event));
    ctx.lineTo(...at(event));
    ctx.stroke();
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!drawing) return;
    ctx.lineTo(...at(event));
    ctx.stroke();
  });
  const finish = () => {
    if (!drawing) return;
    drawing = false;
    state.drawn = true;
    score();
  };
  canvas.addEventListener("pointerup", finish);
  canvas.addEventListener("pointercancel", finish);
  $("draw-clear").addEventListener("click", () => {
    clear();
    state.drawn = false;
  });
  $("draw-upload").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    if (!file) return;
    clear();
    ctx.drawImage(await createImageBitmap(file), 0, 0, canvas.width, canvas.height);
    state.drawn = true;
    score();
  });
  return () => (state.drawn ? score() : undefined);
}

// ---- interpolation --------------------------------------------------------------------------------------

function setPick(slot, b64) {
  state.picks[slot] = b64;
  state.nextPick = 1 - slot;
  const target = $(slot === 0 ? "interp-a" : "interp-b");
  target.src = pngUrl(b64);
  target.hidden = false;
  $("interpolate").disabled = !(state.picks[0] && state.picks[1]);
}

async function interpolate() {
  const body = withLabel({
    x: state.picks, steps: Number($("interp-steps").value), method: $("interp-method").value, format: "png",
  });
  const out = await api("/v1/interpolate", body);
  const strip = $("interp-strip");
  strip.replaceChildren(...out.x.map((b64, i) => image(b64, "thumb", `step ${i + 1} of ${out.x.length}`)));
  bump(strip);
}

function setupInterpolation() {
  const run = coalesce(interpolate);
  $("interpolate").addEventListener("click", run);
  ["a", "b"].forEach((name, slot) => {
    $(`interp-upload-${name}`).addEventListener("change", async (event) => {
      if (event.target.files[0]) setPick(slot, await fileToModelPng(event.target.files[0]));
    });
  });
}

async function loadExamples() {
  const strip = $("example-strip");
  if (!state.info.examples) {
    strip.textContent = "No test examples: the run's dataset was not available to the server. Upload two images.";
    return;
  }
  const ex = await api(`/v1/examples?n=${Math.min(16, state.info.examples)}&format=png`);
  strip.replaceChildren(...ex.x.map((b64, i) => {
    const alt = ex.labels ? `test example ${i} (label ${ex.labels[i]})` : `test example ${i}`;
    const img = image(b64, "thumb pickable", alt);
    img.dataset.index = String(i);
    img.addEventListener("click", () => {
      strip.querySelectorAll(state.nextPick === 0 ? ".picked-a" : ".picked-b")
        .forEach((el) => el.classList.remove("picked-a", "picked-b"));
      img.classList.add(state.nextPick === 0 ? "picked-a" : "picked-b");
      setPick(state.nextPick, b64);
    });
    return img;
  }));
}

// ---- the latent map -------------------------------------------------------------------------------------

function mapView(points) {
  const bounds = [0, 1].map((k) => {
    const v = points.map((p) => p[k]);
    const lo = Math.min(...v);
    const hi = Math.max(...v);
    const pad = 0.05 * (hi - lo || 1);
    return [lo - pad, hi + pad];
  });
  return { x: bounds[0], y: bounds[1] };
}

function toCanvas([u, v], canvas) {
  const { x, y } = state.map.view;
  return [((u - x[0]) / (x[1] - x[0])) * canvas.width, (1 - (v - y[0]) / (y[1] - y[0])) * canvas.height];
}

function fromCanvas(event, canvas) {
  const r = canvas.getBoundingClientRect();
  const { x, y } = state.map.view;
  const fx = (event.clientX - r.left) / r.width;
  const fy = (event.clientY - r.top) / r.height;
  return [x[0] + fx * (x[1] - x[0]), y[1] - fy * (y[1] - y[0])];
}

function drawMap(marker) {
  const canvas = $("latent-map");
  const ctx = canvas.getContext("2d");
  const { points, labels, classes } = state.map;
  ctx.fillStyle = "white";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  points.forEach((p, i) => {
    const [cx, cy] = toCanvas(p, canvas);
    ctx.fillStyle = labels ? PALETTE[classes.indexOf(labels[i]) % PALETTE.length] : PALETTE[0];
    ctx.globalAlpha = 0.7;
    ctx.beginPath();
    ctx.arc(cx, cy, 2.5, 0, 2 * Math.PI);
    ctx.fill();
  });
  ctx.globalAlpha = 1;
  if (marker) {
    const [cx, cy] = toCanvas(marker, canvas);
    ctx.strokeStyle = "black";
    ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.moveTo(cx - 8, cy);
    ctx.lineTo(cx + 8, cy);
    ctx.moveTo(cx, cy - 8);
    ctx.lineTo(cx, cy + 8);
    ctx.stroke();
  }
}

function drawLegend() {
  const { classes } = state.map;
  $("map-legend").replaceChildren(...classes.map((name, i) => {
    const item = document.createElement("span");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.backgroundColor = PALETTE[i % PALETTE.length];
    item.append(swatch, name);
    return item;
  }));
}

async function decodeMapPoint(point) {
  const { mean, axes } = state.map;
  const z = mean.map((m, j) => Math.max(-100, Math.min(100, m + point[0] * axes[0][j] + point[1] * axes[1][j])));
  const out = await api("/v1/decode", withLabel({ z: [z], format: "png" }));
  const img = $("map-image");
  img.src = pngUrl(out.x[0]);
  bump(img);
  $("map-point").textContent = `decoded (${point[0].toFixed(2)}, ${point[1].toFixed(2)})`;
  drawMap(point);
}

async function setupMap() {
  if (!state.info.examples) {
    $("map-note").textContent = "No test examples to map: the run's dataset was not available to the server.";
    return null;
  }
  const m = await api("/v1/map");
  const classes = m.labels ? [...new Set(m.labels)].sort((a, b) => a.localeCompare(b, undefined, { numeric: true }))
    : [];
  state.map = { ...m, classes, view: mapView(m.points) };
  $("map-note").textContent = `Posterior means of ${m.points.length} test examples: ${m.axis_labels.join(" × ")}. `
    + "Click anywhere to decode that point.";
  drawMap(null);
  drawLegend();
  let point = null;
  const decode = coalesce(() => decodeMapPoint(point));
  const canvas = $("latent-map");
  canvas.addEventListener("click", (event) => {
    point = fromCanvas(event, canvas);
    decode();
  });
  return () => (point ? decode() : undefined);
}

// ---- start ----------------------------------------------------------------------------------------------

async function main() {
  try {
    state.info = await api("/v1/info");
    describeModel();
    if (!state.info.image) {
      $("not-image").hidden = false;
      document.querySelectorAll(".image-only").forEach((el) => { el.hidden = true; });
      return;
    }
    const samples = setupSamples();
    const latent = setupLatent();
    const rescore = setupDraw();
    setupInterpolation();
    let redecodeMap = null;
    setupLabels(() => [samples, latent, rescore, redecodeMap].forEach((refresh) => refresh && refresh()));
    const results = await Promise.all([samples(), latent(), loadExamples(), setupMap()]);
    [, , , redecodeMap] = results;
  } catch (err) {
    showError(err);
  } finally {
    document.body.dataset.ready = "true";
  }
}

document.addEventListener("DOMContentLoaded", main);
