// The operator console: models and their registry facts, the live traffic split, the routing
// document (changed by an admin through PUT /v1/routing), the audit trail and drift over time.
import { call, callJson, messenger, wireSignIn } from "./api.js";

const $ = (id) => document.getElementById(id);
const showMessage = messenger("message");
let role = null;
let revision = null;

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.append(td);
  return td;
}

function gateText(v) {
  if (v.gate === true) return "gate passed";
  if (v.gate === false) return `gate refused${v.gate_reasons ? `: ${v.gate_reasons}` : ""}`;
  return "gate not run";
}

function figures(metrics) {
  const keys = Object.keys(metrics || {}).filter((k) => !k.includes("/")).slice(0, 6);
  return keys.map((k) => `${k}=${Number(metrics[k]).toFixed(3)}`).join(", ");
}

async function loadModels() {
  const [index, registry] = await Promise.all([
    callJson("/v2/models"),
    callJson("/v1/models/registry"),
  ]);
  const known = new Map(registry.models.map((m) => [m.name, m]));
  const body = $("models").querySelector("tbody");
  body.replaceChildren();
  for (const m of index.models) {
    const row = document.createElement("tr");
    row.dataset.model = m.name;
    cell(row, m.name);
    cell(row, m.state + (m.reason ? ` (${m.reason})` : ""), m.state === "READY" ? "ok" : "bad");
    cell(row, (m.versions || []).join(", ") || m.version);
    const entry = known.get(m.name);
    const aliases = entry ? Object.entries(entry.aliases).map(([a, v]) => `${a} → v${v}`) : [];
    cell(row, aliases.join(", ") || (entry && entry.source === "file" ? "file (no registry)" : "—"));
    const versions = entry
      ? entry.versions.map(
          (v) =>
            `v${v.version}${v.aliases.length ? ` [${v.aliases.join(", ")}]` : ""}: ${gateText(v)}` +
            `${v.evaluation ? `, ${v.evaluation}` : ""}${figures(v.metrics) ? `, ${figures(v.metrics)}` : ""}`,
        )
      : [];
    cell(row, versions.join("; ") || "—");
    body.append(row);
  }
  fillDriftModels(index.models.map((m) => m.name));
}

async function loadSplit() {
  const doc = await callJson("/v1/routing/decisions");
  const body = $("split").querySelector("tbody");
  body.replaceChildren();
  const totals = new Map();
  for (const v of doc.variants) totals.set(v.model, (totals.get(v.model) || 0) + v.requests);
  for (const v of doc.variants) {
    const row = document.createElement("tr");
    row.dataset.model = v.model;
    row.dataset.variant = v.variant;
    cell(row, v.model);
    cell(row, v.variant);
    cell(row, String(v.weight));
    cell(row, String(v.requests));
    const total = totals.get(v.model) || 0;
    cell(row, total ? `${((100 * v.requests) / total).toFixed(1)} %` : "—");
    cell(row, String(v.errors));
    cell(row, v.ready ? "yes" : "no", v.ready ? "ok" : "bad");
    body.append(row);
  }
  const progress = $("progress");
  progress.replaceChildren();
  for (const [model, p] of Object.entries(doc.progress || {})) {
    const line = document.createElement("p");
    line.textContent = `${model}: ${JSON.stringify(p)}`;
    progress.append(line);
  }
}

async function loadRouting() {
  const response = await call("/v1/routing");
  const doc = await response.json();
  revision = doc.revision;
  $("revision").textContent = `(revision ${doc.revision}, ETag ${response.headers.get("ETag")})`;
  $("routing").value = JSON.stringify(doc, null, 2);
  $("routing").dataset.revision = String(doc.revision);
}

/** The fields a validation message names: "invalid routing document: a.b[0].c: why; ...". */
export function fieldsOf(message) {
  const body = message.replace(/^.*?invalid routing document: /, "");
  const fields = body
    .split("; ")
    .map((part) => /^([\w.\[\]-]+): /.exec(part))
    .filter((m) => m !== null)
    .map((m) => m[1]);
  return fields.length ? fields.join(", ") : "—";
}

async function saveRouting() {
  $("routing-status").textContent = "";
  $("routing-field").textContent = "—";
  let doc;
  try {
    doc = JSON.parse($("routing").value);
  } catch (err) {
    showMessage(`The routing document is not valid JSON: ${err.message}`);
    return;
  }
  try {
    const response = await call("/v1/routing", {
      method: "PUT",
      body: JSON.stringify(doc),
      headers: { "Content-Type": "application/json", "If-Match": `"${revision}"` },
    });
    const accepted = await response.json();
    showMessage("");
    $("routing-status").textContent = `Saved as revision ${accepted.revision}.`;
    await Promise.all([loadRouting(), loadSplit(), loadAudit()]);
  } catch (err) {
    showMessage(err.message);
    $("routing-field").textContent = fieldsOf(err.message);
    $("routing-status").textContent = `Refused; the running document is still revision ${revision}.`;
  }
}

async function loadAudit() {
  if (role !== "admin") return;
  const doc = await callJson("/v1/routing/audit");
  const body = $("audit").querySelector("tbody");
  body.replaceChildren();
  for (const e of doc.entries.slice(-20).reverse()) {
    const row = document.createElement("tr");
    cell(row, e.at || e.time || "");
    cell(row, e.actor || e.by || "");
    cell(row, e.action || e.summary || JSON.stringify(e).slice(0, 120));
    cell(row, e.revision === undefined ? "" : String(e.revision));
    body.append(row);
  }
}

// ------------------------------------------------------------------ drift chart

function fillDriftModels(names) {
  const select = $("drift-model");
  const current = select.value;
  select.replaceChildren();
  for (const n of names) {
    const option = document.createElement("option");
    option.value = n;
    option.textContent = n;
    select.append(option);
  }
  if (names.includes(current)) select.value = current;
}

async function loadDrift() {
  const model = $("drift-model").value;
  if (!model) return;
  const status = $("drift-status");
  let doc;
  try {
    doc = await callJson(`/v1/monitor/history?model=${encodeURIComponent(model)}`);
  } catch (err) {
    status.textContent = err.message;
    return;
  }
  const points = doc.evaluations;
  status.textContent = points.length ? `${points.length} evaluations` : "no evaluations yet";
  if (typeof window.Plotly === "undefined") {
    status.textContent += " (Plotly is not installed: run infra/install-ui-deps.sh)";
    return;
  }
  const times = points.map((p) => new Date(p.time * 1000).toISOString());
  const traces = [
    { x: times, y: points.map((p) => p.drift_share), name: "drift share", mode: "lines+markers" },
  ];
  for (const key of ["accuracy", "sensitivity", "dice"]) {
    const ys = points.map((p) => (p.quality ? p.quality[key] ?? null : null));
    if (ys.some((y) => y !== null)) traces.push({ x: times, y: ys, name: key, mode: "lines+markers" });
  }
  window.Plotly.react(
    "drift-chart",
    traces,
    {
      paper_bgcolor: "#1a2027",
      plot_bgcolor: "#1a2027",
      font: { color: "#e6e9ec" },
      margin: { t: 20, r: 20, b: 40, l: 50 },
      yaxis: { range: [0, 1] },
      legend: { orientation: "h" },
    },
    { displaylogo: false, responsive: true },
  );
}

// ------------------------------------------------------------------ links

async function loadLinks() {
  const doc = await callJson("/v1/console/links");
  $("drift-report").hidden = !doc.evidently_report;
  const list = $("grafana-links");
  list.replaceChildren();
  for (const d of doc.grafana) {
    const item = document.createElement("li");
    const link = document.createElement("a");
    link.href = d.url;
    link.textContent = d.title;
    link.target = "_blank";
    link.rel = "noopener noreferrer";
    item.append(link);
    list.append(item);
  }
  $("links-panel").hidden = doc.grafana.length === 0;
}

/** The report has inline scripts, which this page's CSP rightly refuses: it is saved as a
 * file (opened from disk it shows as Evidently made it). */
async function saveReport() {
  const model = $("drift-model").value;
  if (!model) return;
  try {
    const response = await call(`/v1/monitor/report?model=${encodeURIComponent(model)}`);
    const url = URL.createObjectURL(await response.blob());
    const link = document.createElement("a");
    link.href = url;
    link.download = `drift-report-${model}.html`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  } catch (err) {
    $("drift-status").textContent = err.message;
  }
}

async function loadAll() {
  try {
    await Promise.all([loadModels(), loadSplit(), loadRouting(), loadAudit(), loadLinks()]);
    await loadDrift();
  } catch (err) {
    showMessage(err.message);
  }
}

function onRole(r) {
  role = r;
  $("console").hidden = false;
  $("save-routing").hidden = role !== "admin";
  $("routing").readOnly = role !== "admin";
  $("audit-panel").hidden = role !== "admin";
  loadAll();
}

$("save-routing").addEventListener("click", saveRouting);
$("reload-routing").addEventListener("click", () => loadRouting().catch((e) => showMessage(e.message)));
$("drift-model").addEventListener("change", loadDrift);
$("drift-report").addEventListener("click", saveReport);
wireSignIn(onRole, showMessage);
