// rulefinder's page: upload a recording, show its summary and the prediction; list and delete uploads.
// Plain DOM, no framework or CDN: the page must work on a machine with no internet.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { key: localStorage.getItem("rulefinder.key") || "", authRequired: false };

function headers(extra = {}) {
  const h = { ...extra };
  if (state.key) h["Authorization"] = "Bearer " + state.key;
  return h;
}

async function api(method, path, body, isForm = false) {
  const opts = { method, headers: headers(isForm || !body ? {} : { "Content-Type": "application/json" }) };
  if (body) opts.body = isForm ? body : JSON.stringify(body);
  const resp = await fetch(path, opts);
  if (resp.status === 204) return null;
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (!resp.ok) {
    let detail = data && data.detail !== undefined ? data.detail : resp.statusText;
    if (typeof detail !== "string") detail = JSON.stringify(detail);
    throw new Error(`${resp.status}: ${detail}`);
  }
  return data;
}

function setStatus(text, isError = false) {
  const el = $("#status");
  el.textContent = text;
  el.className = isError ? "error" : "";
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k === "style") e.style.cssText = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function pct(p) { return (100 * p).toFixed(1) + "%"; }

function barChart(container, probs, top) {
  container.replaceChildren();
  const entries = Object.entries(probs).sort((a, b) => b[1] - a[1]);
  for (const [name, p] of entries) {
    const row = el("div", { class: "bar-row" + (name === top ? " top" : ""), "data-label": name },
      el("span", { class: "label", title: name }, name),
      el("div", { class: "track" }, el("div", { class: "fill", style: `width:${(100 * p).toFixed(1)}%` })),
      el("span", { class: "value" }, pct(p)));
    container.append(row);
  }
}

function showSummary(rec) {
  const s = rec.summary;
  const dl = el("dl", { class: "kv" });
  const add = (k, v) => dl.append(el("dt", {}, k), el("dd", {}, v));
  add("file", s.source);
  add("format", rec.format);
  add("sessions", s.sessions);
  add("stimuli", s.stimuli);
  add("units", s.units);
  add("areas", s.areas.map((a) => `${a.area} (${a.units})`).join(", ") + (s.area_order ? "  [input \u2192 output]" : "  [depth unknown]"));
  add("NaN", pct(s.nan_fraction));
  add("session_time", `${s.session_time_min} .. ${s.session_time_max}`);
  add("noise", rec.noise);
  const body = $("#summary-body");
  body.replaceChildren(dl);
  if (rec.warnings.length) body.append(el("ul", { class: "warnings" }, ...rec.warnings.map((w) => el("li", {}, w))));
  $("#summary").hidden = false;
}

function showResult(r) {
  const v = $("#verdict");
  v.textContent = r.verdict;
  v.className = "verdict " + r.verdict;
  const acc = r.expected_accuracy == null ? "not measured for this size" : pct(r.expected_accuracy);
  $("#headline").replaceChildren(
    el("strong", {}, r.top_rule), ` (family ${r.top_family}, optimizer ${r.top_optimizer}). `,
    `Unknown score ${r.unknown_score.toFixed(2)}. Expected accuracy at this size and noise (${r.noise}): `,
    el("span", { id: "expected-accuracy" }, acc), ".",
    r.confusable_with.length ? ` Hard to tell apart from: ${r.confusable_with.join(", ")}.` : "");
  barChart($("#rule-chart"), r.rule_probabilities, r.top_rule);
  barChart($("#optimizer-chart"), r.optimizer_probabilities, r.top_optimizer);
  barChart($("#family-chart"), r.family_probabilities, r.top_family);
  const tbody = $("#per-area tbody");
  tbody.replaceChildren();
  for (const a of r.per_area) {
    const [top, p] = Object.entries(a.rule_probabilities).sort((x, y) => y[1] - x[1])[0] || ["", 0];
    tbody.append(el("tr", {}, el("td", {}, a.area), el("td", {}, a.units),
      el("td", {}, a.depth == null ? "\u2013" : a.depth.toFixed(2)), el("td", {}, top), el("td", {}, pct(p))));
  }
  $("#result-warnings").replaceChildren(...r.warnings.map((w) => el("li", {}, w)));
  $("#result").hidden = false;
}

async function predict(recId) {
  setStatus("Predicting\u2026");
  let job = await api("POST", "/v1/predictions", { recording_ids: [recId] });
  const t0 = Date.now();
  while (job.status === "queued" || job.status === "running") {
    if (Date.now() - t0 > 300000) throw new Error("the prediction took over 5 minutes; try again later");
    job = await api("GET", "/v1/predictions/" + job.id + "?wait=10");  // long poll
  }
  if (job.status === "failed") throw new Error(job.error || "the prediction failed");
  showResult(job.result);
  setStatus("Done.");
}

async function upload(files) {
  if (!files.length) return;
  const form = new FormData();
  for (const f of files) form.append("files", f, f.name);
  form.append("noise", $("#noise").value);
  if ($("#area-order").value.trim()) form.append("area_order", $("#area-order").value.trim());
  setStatus(`Uploading ${files.length} file(s)\u2026`);
  $("#result").hidden = true;
  try {
    const rec = await api("POST", "/v1/recordings", form, true);
    showSummary(rec);
    await refreshList();
    await predict(rec.id);
  } catch (e) {
    setStatus(e.message, true);
  }
}

async function refreshList() {
  const tbody = $("#uploads tbody");
  let data;
  try { data = await api("GET", "/v1/recordings"); } catch (e) { setStatus(e.message, true); return; }
  tbody.replaceChildren();
  for (const rec of data.recordings) {
    const s = rec.summary;
    const show = el("button", { type: "button", class: "show" }, "predict");
    show.onclick = async () => { showSummary(rec); try { await predict(rec.id); } catch (e) { setStatus(e.message, true); } };
    const del = el("button", { type: "button", class: "delete" }, "delete");
    del.onclick = async () => {
      try { await api("DELETE", "/v1/recordings/" + rec.id); setStatus(`Deleted ${s.source}.`); await refreshList(); }
      catch (e) { setStatus(e.message, true); }
    };
    tbody.append(el("tr", { "data-id": rec.id }, el("td", {}, s.source), el("td", {}, s.sessions), el("td", {}, s.stimuli),
      el("td", {}, s.units), el("td", {}, rec.noise), el("td", {}, new Date(rec.created * 1000).toLocaleString()),
      el("td", {}, show, " ", del)));
  }
  $("#no-uploads").hidden = data.recordings.length > 0;
}

function setup() {
  const dz = $("#dropzone");
  dz.addEventListener("dragover", (e) => { e.preventDefault(); dz.classList.add("over"); });
  dz.addEventListener("dragleave", () => dz.classList.remove("over"));
  dz.addEventListener("drop", (e) => { e.preventDefault(); dz.classList.remove("over"); upload([...e.dataTransfer.files]); });
  dz.addEventListener("click", (e) => { if (e.target.tagName !== "INPUT") $("#file-input").click(); });
  $("#file-input").addEventListener("change", (e) => { upload([...e.target.files]); e.target.value = ""; });
  $("#save-key").onclick = () => {
    state.key = $("#api-key").value.trim();
    localStorage.setItem("rulefinder.key", state.key);
    refreshList();
  };
  $("#api-key").value = state.key;
  fetch("/healthz").then((r) => r.json()).then((h) => {
    state.authRequired = h.auth === "required";
    $("#key-section").hidden = !state.authRequired;
    if (!state.authRequired || state.key) refreshList();
  });
}

setup();
