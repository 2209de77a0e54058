// The review page: upload a study, look at each slice with its mask and explanation, agree,
// disagree or correct the mask, and send that back as feedback on the same prediction.
import { callJson, messenger, uploadForm, wireSignIn } from "./api.js";
import { decode, encode } from "./rle.js";
import { drawHeat } from "./heat.js";

const $ = (id) => document.getElementById(id);
const showMessage = messenger("message");

const state = {
  files: [],
  analysis: null,
  shape: null, // [slices, rows, cols]
  pictures: [], // HTMLImageElement per slice
  masks: [], // Uint8Array per slice (row-major), the reviewer's working copy
  predicted: [], // the model's masks, to undo edits
  heat: new Map(), // `${method}:${slice}` -> explanation of that slice
  slice: 0,
  painting: false,
  classes: new Map(), // model name -> its class names (from /v2/models)
};

function setBusy(busy) {
  $("busy").hidden = !busy;
  $("analyse").disabled = busy;
}

function loadPicture(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the slice preview could not be shown"));
    img.src = src;
  });
}

async function analyse(event) {
  event.preventDefault();
  const files = Array.from($("files").files);
  if (!files.length) {
    showMessage("Choose the study's files first.");
    return;
  }
  setBusy(true);
  showMessage("");
  try {
    const segment = $("segment").value;
    const analysis = await callJson(`/v1/analyze?segment=${encodeURIComponent(segment)}`, {
      method: "POST",
      body: uploadForm(files),
      headers: { Accept: "application/json" },
    });
    const preview = await callJson("/v1/preview", { method: "POST", body: uploadForm(files) });
    await show(analysis, preview.slices.map((p) => p.png), files, firstPositive(analysis));
    loadQueue();
  } catch (err) {
    showMessage(err.message);
  } finally {
    setBusy(false);
  }
}

/** Put one analysis in the viewer (``files``: the upload, or null for a kept study). */
async function show(analysis, previews, files, slice) {
  const pictures = await Promise.all(previews.map((src) => loadPicture(src)));
  const [, h, w] = analysis.image.shape;
  state.files = files;
  state.analysis = analysis;
  state.shape = analysis.image.shape;
  state.pictures = pictures;
  state.predicted = analysis.mask.slices.map((rle) => decode(rle));
  state.masks = state.predicted.map((m) => m.slice());
  state.heat = new Map();
  state.slice = slice;
  for (const id of ["image-layer", "heat-layer", "mask-layer"]) {
    $(id).width = w;
    $(id).height = h;
  }
  fillLabels(analysis);
  $("viewer").hidden = false;
  $("review-status").textContent = "";
  await render();
  $("stack").focus();
}

function firstPositive(analysis) {
  const hit = analysis.slices.find((s) => s.positive);
  return hit ? hit.index : 0;
}

function knownClasses(analysis) {
  const classifier = analysis.models.classifier;
  const served = classifier ? state.classes.get(classifier.name) : undefined;
  if (served) return served;
  const seen = new Set(analysis.slices.map((s) => s.class).filter((c) => c !== undefined));
  return Array.from(seen);
}

function fillLabels(analysis) {
  const select = $("label");
  select.replaceChildren();
  for (const c of knownClasses(analysis)) {
    const option = document.createElement("option");
    option.value = c;
    option.textContent = c;
    select.append(option);
  }
}

async function loadClasses() {
  try {
    const index = await callJson("/v2/models");
    state.classes = new Map(index.models.filter((m) => m.classes).map((m) => [m.name, m.classes]));
  } catch (_) {
    state.classes = new Map();
  }
}

// ------------------------------------------------------------------ drawing

function drawImageLayer() {
  const canvas = $("image-layer");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(state.pictures[state.slice], 0, 0, canvas.width, canvas.height);
}

function drawMaskLayer() {
  const canvas = $("mask-layer");
  const ctx = canvas.getContext("2d");
  const [, h, w] = state.shape;
  const pixels = ctx.createImageData(w, h);
  const mask = state.masks[state.slice];
  for (let i = 0; i < mask.length; i++) {
    if (mask[i]) {
      pixels.data[i * 4] = 255;
      pixels.data[i * 4 + 1] = 40;
      pixels.data[i * 4 + 2] = 40;
      pixels.data[i * 4 + 3] = 255;
    }
  }
  ctx.putImageData(pixels, 0, 0);
  canvas.style.opacity = $("show-mask").checked ? String($("mask-opacity").value / 100) : "0";
}

async function explanationOf(k, method) {
  const key = `${method}:${k}`;
  if (!state.heat.has(key)) {
    if (!state.files) {
      throw new Error("Explanations need the study itself: upload it to see them.");
    }
    const query = new URLSearchParams({ slices: String(k), segment: $("segment").value, method });
    const doc = await callJson(`/v1/explain?${query}`, {
      method: "POST",
      body: uploadForm(state.files),
      headers: { Accept: "application/json" },
    });
    state.heat.set(key, doc.slices[0]);
  }
  return state.heat.get(key);
}

async function drawHeatLayer() {
  const canvas = $("heat-layer");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  canvas.dataset.shown = "none";
  if (!$("show-heat").checked) return;
  const k = state.slice;
  const method = $("heat-method").value;
  const entry = await explanationOf(k, method);
  if (k !== state.slice || method !== $("heat-method").value || !$("show-heat").checked) return;
  const wanted = $("heat-target").value;
  const other = wanted === "segmenter" ? "classifier" : "segmenter";
  const chosen = entry[wanted] ? wanted : other;
  if (!entry[chosen]) return;
  drawHeat(canvas, entry[chosen]);
  canvas.dataset.shown = chosen;
  canvas.style.opacity = String($("heat-opacity").value / 100);
}

function fact(list, term, value) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  dd.textContent = value;
  list.append(dt, dd);
}

function describe(model) {
  return model ? `${model.name} v${model.version} (${model.variant})` : "—";
}

function drawFacts() {
  const a = state.analysis;
  const s = a.slices[state.slice];
  const list = $("facts");
  list.replaceChildren();
  fact(list, "slice", `${state.slice + 1} of ${a.slices.length}`);
  fact(list, "probability", s.probability.toFixed(3));
  fact(list, "slice decision", s.class ?? (s.positive ? "positive" : "negative"));
  fact(list, "mask on slice", s.positive ? "yes" : "no");
  fact(list, "area (mm²)", s.area_mm2.toFixed(1));
  fact(list, "study decision", a.decision ?? "—");
  fact(list, "total area (mm²)", a.mask_area_mm2.toFixed(1));
  fact(list, "volume (ml)", a.mask_volume_ml === null ? "— (one slice)" : a.mask_volume_ml.toFixed(3));
  fact(list, "classifier", describe(a.models.classifier));
  fact(list, "segmenter", describe(a.models.segmenter));
  fact(list, "chain", a.chain ?? "one model");
  fact(list, "request id", a.request_id ?? "—");
  const select = $("label");
  if (s.class !== undefined) select.value = s.class;
}

async function render() {
  if (!state.analysis) return;
  const z = state.shape[0];
  $("slice-label").textContent = `slice ${state.slice + 1} / ${z}`;
  $("prev").disabled = state.slice === 0;
  $("next").disabled = state.slice === z - 1;
  drawImageLayer();
  drawMaskLayer();
  drawFacts();
  try {
    await drawHeatLayer();
  } catch (err) {
    showMessage(err.message);
  }
}

function go(step) {
  if (!state.analysis) return;
  const next = Math.min(Math.max(state.slice + step, 0), state.shape[0] - 1);
  if (next !== state.slice) {
    state.slice = next;
    render();
  }
}

// ------------------------------------------------------------------ correcting the mask

function tool() {
  return document.querySelector("input[name=tool]:checked").value;
}

function paint(event) {
  const canvas = $("mask-layer");
  const rect = canvas.getBoundingClientRect();
  const [, h, w] = state.shape;
  const x = ((event.clientX - rect.left) * w) / rect.width;
  const y = ((event.clientY - rect.top) * h) / rect.height;
  const r = Number($("brush-size").value);
  const value = tool() === "brush" ? 1 : 0;
  const mask = state.masks[state.slice];
  for (let row = Math.max(0, Math.floor(y - r)); row <= Math.min(h - 1, Math.ceil(y + r)); row++) {
    for (let col = Math.max(0, Math.floor(x - r)); col <= Math.min(w - 1, Math.ceil(x + r)); col++) {
      if ((row + 0.5 - y) ** 2 + (col + 0.5 - x) ** 2 <= r * r) mask[row * w + col] = value;
    }
  }
  drawMaskLayer();
}

function wirePainting() {
  const canvas = $("mask-layer");
  canvas.addEventListener("pointerdown", (event) => {
    if (tool() === "none" || !state.analysis) return;
    state.painting = true;
    canvas.setPointerCapture(event.pointerId);
    paint(event);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (state.painting) paint(event);
  });
  const stop = () => {
    state.painting = false;
  };
  canvas.addEventListener("pointerup", stop);
  canvas.addEventListener("pointercancel", stop);
  $("reset-mask").addEventListener("click", () => {
    state.masks[state.slice] = state.predicted[state.slice].slice();
    drawMaskLayer();
  });
}

// ------------------------------------------------------------------ feedback

async function sendFeedback(body, done) {
  const s = state.analysis.slices[state.slice];
  if (!s.prediction_id) {
    showMessage("This gateway keeps no prediction log, so feedback cannot be stored.");
    return;
  }
  try {
    const answer = await callJson("/v1/feedback", {
      method: "POST",
      body: JSON.stringify({ request_id: s.prediction_id, reviewer_role: "radiologist", ...body }),
      headers: { "Content-Type": "application/json" },
    });
    showMessage("");
    $("review-status").textContent = `${done} for slice ${state.slice + 1} (${answer.request_id}).`;
  } catch (err) {
    showMessage(err.message);
  }
}

function otherClass(current) {
  const options = Array.from($("label").options).map((o) => o.value);
  return options.length === 2 ? options.find((c) => c !== current) : $("label").value;
}

function wireReview() {
  $("agree").addEventListener("click", () => {
    const s = state.analysis.slices[state.slice];
    if (s.class !== undefined) sendFeedback({ label: s.class }, "Agreement stored");
    else sendFeedback({ mask_rle: state.analysis.mask.slices[state.slice] }, "Agreement stored");
  });
  $("disagree").addEventListener("click", () => {
    const s = state.analysis.slices[state.slice];
    const label = otherClass(s.class);
    if (label === undefined || label === s.class) {
      showMessage("Pick the right label first, then disagree.");
      return;
    }
    sendFeedback({ label }, "Disagreement stored");
  });
  $("submit-correction").addEventListener("click", () => {
    const [, h, w] = state.shape;
    const body = { mask_rle: encode(state.masks[state.slice], h, w) };
    if ($("label").value) body.label = $("label").value;
    sendFeedback(body, "Correction stored");
  });
}

// ------------------------------------------------------------------ the review queue

async function loadQueue() {
  const model = $("queue-model").value;
  if (!model) return;
  const body = $("queue").querySelector("tbody");
  try {
    const doc = await callJson(`/v1/review/queue?model=${encodeURIComponent(model)}&limit=20`);
    $("queue-status").textContent = doc.kept_for_review
      ? `${doc.items.length} unreviewed: shadow disagreements, then least confident first`
      : `${doc.items.length} unreviewed; studies are not kept for review on this gateway`;
    body.replaceChildren();
    for (const item of doc.items) {
      const row = document.createElement("tr");
      row.dataset.prediction = item.prediction_id;
      if (item.disagrees) row.classList.add("disagrees");
      for (const text of [
        item.prediction_id,
        item.decision ?? "—",
        item.confidence.toFixed(3),
        `v${item.version} (${item.variant})`,
        item.shadow
          ? `${item.disagrees ? "disagrees" : "agrees"}: v${item.shadow.version} (${item.shadow.variant}) ${item.shadow.decision}`
          : "—",
      ]) {
        const td = document.createElement("td");
        td.textContent = text;
        row.append(td);
      }
      const td = document.createElement("td");
      if (item.kept) {
        const open = document.createElement("button");
        open.type = "button";
        open.textContent = "Open";
        open.addEventListener("click", () => openKept(item));
        td.append(open);
      } else {
        td.textContent = "not kept";
      }
      row.append(td);
      body.append(row);
    }
  } catch (err) {
    showMessage(err.message);
  }
}

async function openKept(item) {
  try {
    const doc = await callJson(`/v1/review/studies/${encodeURIComponent(item.request_id)}`);
    await show(doc.analysis, doc.previews, null, item.slice ?? 0);
    showMessage("");
  } catch (err) {
    showMessage(err.message);
  }
}

function fillQueueModels() {
  const select = $("queue-model");
  select.replaceChildren();
  for (const [name, classes] of state.classes) {
    if (!classes || classes.length < 2) continue;
    const option = document.createElement("option");
    option.value = name;
    option.textContent = name;
    select.append(option);
  }
  $("queue-panel").hidden = select.options.length === 0;
  loadQueue();
}

// ------------------------------------------------------------------ wiring

function wireViewer() {
  $("prev").addEventListener("click", () => go(-1));
  $("next").addEventListener("click", () => go(1));
  document.addEventListener("keydown", (event) => {
    const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(event.target.tagName);
    if (typing || !state.analysis) return;
    if (event.key === "ArrowRight" || event.key === "ArrowDown") {
      event.preventDefault();
      go(1);
    } else if (event.key === "ArrowLeft" || event.key === "ArrowUp") {
      event.preventDefault();
      go(-1);
    }
  });
  for (const id of ["show-mask", "mask-opacity"]) $(id).addEventListener("input", drawMaskLayer);
  for (const id of ["show-heat", "heat-target", "heat-method"]) {
    $(id).addEventListener("input", () => drawHeatLayer().catch((err) => showMessage(err.message)));
  }
  $("heat-opacity").addEventListener("input", () => {
    $("heat-layer").style.opacity = String($("heat-opacity").value / 100);
  });
}

function onRole(role) {
  const mayAnalyse = role === "client" || role === "admin" || role === "anonymous";
  $("upload-panel").hidden = !mayAnalyse;
  if (mayAnalyse) loadClasses().then(fillQueueModels);
  else {
    showMessage(`A ${role} key may send feedback but not analyse: sign in with a client key.`, "info");
  }
}

$("upload").addEventListener("submit", analyse);
$("queue-refresh").addEventListener("click", loadQueue);
$("queue-model").addEventListener("change", loadQueue);
wireViewer();
wirePainting();
wireReview();
wireSignIn(onRole, showMessage);
