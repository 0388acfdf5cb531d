// The operator's page: playground, live queue (progress, ETA, previews, cancel) and history.
// Talks to this server only: the files and predictions APIs and /web/api (an SSE feed read with fetch,
// so the API key can travel in the Authorization header).
"use strict";

const KEY = "vace-api-key";
const ACTIVE = ["queued", "processing"];
const page = document.body.dataset;
const predictions = new Map(); // id -> latest summary
const cards = new Map(); // id -> its card element
const rates = new Map(); // id -> {t, step}: the first denoising step this page saw, for the ETA
let historyCursor = null;

class NeedKey extends Error {}

const $ = (selector, root = document) => root.querySelector(selector);

function authHeaders(extra = {}) {
  const key = sessionStorage.getItem(KEY);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : { ...extra };
}

function askKey(message = "") {
  $("#auth").hidden = false;
  $("#auth-error").textContent = message;
  $("#auth-key").focus();
}

async function api(path, options = {}) {
  const resp = await fetch(path, { ...options, headers: authHeaders(options.headers) });
  if (resp.status === 401) {
    sessionStorage.removeItem(KEY);
    askKey("The key was not accepted.");
    throw new NeedKey("an API key is needed");
  }
  const text = await resp.text();
  const data = text ? JSON.parse(text) : null;
  if (!resp.ok) {
    const detail = data && (typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail || data));
    throw new Error(detail || `HTTP ${resp.status}`);
  }
  return data;
}

// ---- the live feed ----------------------------------------------------------------------------------------

function setConnection(text) {
  $("#connection").textContent = text;
  $("#connection").className = `badge ${text}`;
}

function parseEvents(buffer, onEvent) {
  let end;
  while ((end = buffer.indexOf("\n\n")) >= 0) {
    const block = buffer.slice(0, end);
    buffer = buffer.slice(end + 2);
    let kind = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) kind = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    if (data.length) onEvent(kind, JSON.parse(data.join("\n")));
  }
  return buffer;
}

async function follow() {
  setConnection("connecting");
  try {
    const query = page.prediction ? `?id=${encodeURIComponent(page.prediction)}` : "";
    const resp = await fetch(`/web/api/events${query}`, { headers: authHeaders({ Accept: "text/event-stream" }) });
    if (resp.status === 401) {
      const hadKey = Boolean(sessionStorage.getItem(KEY));
      sessionStorage.removeItem(KEY);
      askKey(hadKey ? "The key was not accepted." : "");
      setConnection("offline");
      return;
    }
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    setConnection("live");
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer = parseEvents(buffer + value, onEvent);
    }
  } catch (err) {
    console.warn("feed:", err);
  }
  setConnection("offline");
  setTimeout(follow, 1000);
}

function onEvent(kind, data) {
  if (kind === "snapshot") {
    for (const p of [...data.active, ...data.finished]) update(p);
    if (historyCursor === null) setHistoryCursor(data.next);
  } else if (kind === "prediction") {
    update(data);
  }
}

function setHistoryCursor(cursor) {
  historyCursor = cursor || "";
  const more = $("#history-more");
  if (more) more.hidden = !cursor;
}

// ---- cards --------------------------------------------------------------------------------------------------

function update(p) {
  const previous = predictions.get(p.id);
  if (previous && !("preview" in p)) p.preview = previous.preview; // the feed sends a preview when it changes
  predictions.set(p.id, p);
  const card = cards.get(p.id) || makeCard(p);
  fillCard(card, p);
  place(card, p);
}

function element(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

function makeCard(p) {
  const card = element("article", "card");
  card.dataset.id = p.id;
  const head = element("header");
  const link = element("a", "id", p.id);
  link.href = `/p/${p.id}`;
  head.append(link, " ", element("span", "status"), " ", element("span", "endpoint muted"));
  const bar = element("div", "progress-row");
  const progress = element("progress");
  progress.max = 100;
  progress.value = 0;
  bar.append(progress, element("span", "step"), element("span", "eta muted"), element("span", "position muted"));
  const preview = element("img", "preview");
  preview.alt = "live preview";
  preview.hidden = true;
  const actions = element("div", "actions");
  const cancel = element("button", "cancel", "Cancel");
  cancel.type = "button";
  cancel.addEventListener("click", () => cancelPrediction(p.id, cancel));
  const rerun = element("button", "rerun", "Run again");
  rerun.type = "button";
  rerun.addEventListener("click", () => runAgain(p.id));
  actions.append(cancel, rerun);
  card.append(head, element("p", "prompt"), bar, preview, element("div", "player"), element("dl", "facts"),
    element("p", "error"), actions);
  cards.set(p.id, card);
  return card;
}

function eta(p) {
  if (p.status !== "processing" || !p.step || !p.steps) return "";
  const now = performance.now();
  const first = rates.get(p.id);
  if (!first || p.step < first.step) {
    rates.set(p.id, { t: now, step: p.step });
    return "";
  }
  if (p.step === first.step || now <= first.t) return "";
  const perStep = (now - first.t) / 1000 / (p.step - first.step);
  return `ETA ${Math.max(0, Math.round(perStep * (p.steps - p.step)))} s`;
}

function fact(dl, name, value) {
  if (value === null || value === undefined || value === "") return;
  dl.append(element("dt", "", name), element("dd", "", String(value)));
}

function fillCard(card, p) {
  const active = ACTIVE.includes(p.status);
  $(".status", card).textContent = p.cancel_requested && active ? `${p.status} (cancelling)` : p.status;
  $(".status", card).className = `status ${p.status}`;
  $(".endpoint", card).textContent = `${p.endpoint} (${p.dialect})`;
  $(".prompt", card).textContent = (p.rerun && p.rerun.prompt) || "";
  $(".progress-row", card).hidden = !active;
  $("progress", card).value = p.progress || 0;
  $(".step", card).textContent = p.steps ? ` step ${p.step || 0}/${p.steps} ` : "";
  $(".eta", card).textContent = eta(p);
  $(".position", card).textContent = p.status === "queued" && p.position !== null ? ` position ${p.position + 1}` : "";
  const preview = $(".preview", card);
  if (p.preview && active) {
    if (preview.dataset.step !== String(p.preview.step)) {
      preview.src = p.preview.image;
      preview.dataset.step = String(p.preview.step);
      preview.title = `after step ${p.preview.step}/${p.preview.total}`;
    }
    preview.hidden = false;
  } else {
    preview.hidden = true;
  }
  const player = $(".player", card);
  if (p.output && p.output.url && !$("video", player)) {
    const video = element("video");
    video.controls = true;
    video.preload = "metadata";
    video.src = p.output.url;
    player.append(video);
  }
  const dl = $(".facts", card);
  dl.replaceChildren();
  const r = p.rerun || {};
  fact(dl, "size", r.width && r.height ? `${r.width}x${r.height}` : "");
  fact(dl, "frames", r.num_frames);
  fact(dl, "steps", r.steps);
  fact(dl, "task", r.task);
  fact(dl, "seed", p.seed);
  fact(dl, "predict time", p.predict_time !== null && p.predict_time !== undefined ? `${p.predict_time} s` : "");
  fact(dl, "GPU seconds", p.gpu_seconds);
  if (p.timings) fact(dl, "timings", Object.entries(p.timings).map(([k, v]) => `${k} ${v} s`).join(", "));
  if (p.loras) fact(dl, "LoRAs", p.loras.map((r) => `${r.lora} x${r.scale}`).join(", "));
  const inputs = Object.entries(p.input || {}).filter(([, v]) => v !== null && v !== "");
  const shown = (v) => (typeof v === "string" ? v : JSON.stringify(v));
  const short = (v) => (shown(v).length > 80 ? `${shown(v).slice(0, 77)}...` : shown(v));
  fact(dl, "input", inputs.map(([k, v]) => `${k}=${short(v)}`).join("; "));
  if (p.data_removed) fact(dl, "output", "removed (retention)");
  $(".error", card).textContent = p.error || "";
  $(".cancel", card).hidden = !active || p.cancel_requested;
  $(".rerun", card).hidden = active || !$("#playground-form");
}

function place(card, p) {
  if (page.prediction) {
    if (p.id === page.prediction) $("#detail-card").replaceChildren(card);
    return;
  }
  const active = ACTIVE.includes(p.status);
  const list = $(active ? "#queue-list" : "#history-list");
  const same = [...predictions.values()].filter((q) => ACTIVE.includes(q.status) === active);
  // queue: oldest first (the order workers take them); history: newest first
  const key = (q) => (active ? q.created_at : -(q.completed_at || q.created_at));
  same.sort((a, b) => key(a) - key(b));
  let position = 0;
  for (const q of same) {
    list.append(cards.get(q.id));
    if (q.status === "queued") $(".position", cards.get(q.id)).textContent = ` position ${++position}`;
  }
  $("p.muted", list)?.remove();
  if (active === false && !$("#queue-list article")) {
    $("#queue-list").replaceChildren(element("p", "muted", "Nothing queued or running."));
  }
  const queued = [...predictions.values()].filter((q) => ACTIVE.includes(q.status)).length;
  $("#queue-count").textContent = queued ? `(${queued})` : "";
}

async function cancelPrediction(id, button) {
  button.disabled = true;
  try {
    update({ ...predictions.get(id), ...(await canceled(id)) });
  } catch (err) {
    if (!(err instanceof NeedKey)) alert(`Cancel failed: ${err.message}`);
  }
  button.disabled = false;
}

async function canceled(id) {
  await api(`/v1/predictions/${encodeURIComponent(id)}/cancel`, { method: "POST" });
  return api(`/web/api/predictions/${encodeURIComponent(id)}?preview=0`);
}

// ---- the playground -----------------------------------------------------------------------------------------

const NUMBERS = { width: parseInt, height: parseInt, num_frames: parseInt, fps: parseInt, steps: parseInt,
  seed: parseInt, guidance: parseFloat, shift: parseFloat };
const TEXTS = ["prompt", "negative_prompt", "sampler", "preset", "task"];
const MEDIA = ["video", "mask", "first_frame", "last_frame"];

async function uploaded(form, field) {
  const files = form.elements[`${field}_file`].files;
  if (!files.length) {
    return form.elements[`${field}_url`].value.split("\n").map((s) => s.trim()).filter(Boolean);
  }
  const urls = [];
  for (const file of files) {
    const data = new FormData();
    data.append("content", file, file.name);
    urls.push((await api("/v1/files", { method: "POST", body: data })).urls.get);
  }
  return urls;
}

// ---- LoRAs: rows of (name or URL, scale, expert); names offered from GET /v1/loras -------------------------

const EXPERTS = ["both", "high_noise", "low_noise"];

async function loadLoraNames() {
  const list = $("#lora-names");
  if (!list) return;
  try {
    const library = await api("/v1/loras");
    list.replaceChildren(...library.loras.filter((e) => !e.error).map((e) => {
      const option = element("option");
      option.value = e.name;
      option.label = `${e.name}: ${e.base_model.model}, rank ${e.base_model.rank}; fits ${e.fits.join(", ") || "none"}`;
      return option;
    }));
  } catch (err) {
    if (!(err instanceof NeedKey)) console.warn(`LoRA library: ${err.message}`);
  }
}

function addLoraRow(lora = {}) {
  const row = element("div", "lora");
  const ref = element("input");
  ref.name = "lora_ref";
  ref.setAttribute("list", "lora-names");
  ref.placeholder = "name or https://.../lora.safetensors";
  ref.value = lora.name || lora.url || "";
  const scale = element("input");
  Object.assign(scale, { name: "lora_scale", type: "number", min: "-4", max: "4", step: "0.05" });
  scale.value = lora.scale ?? 1;
  const expert = element("select");
  expert.name = "lora_expert";
  for (const name of EXPERTS) expert.append(new Option(name, name));
  expert.value = lora.expert || "both";
  const remove = element("button", "lora-remove", "Remove");
  remove.type = "button";
  remove.addEventListener("click", () => row.remove());
  row.append(ref, scale, expert, remove);
  $("#lora-rows").append(row);
}

function loraInput() {
  const loras = [];
  for (const row of document.querySelectorAll("#lora-rows .lora")) {
    const ref = $("[name=lora_ref]", row).value.trim();
    if (!ref) continue;
    const lora = /^https?:\/\//i.test(ref) ? { url: ref } : { name: ref };
    lora.scale = parseFloat($("[name=lora_scale]", row).value);
    const expert = $("[name=lora_expert]", row).value;
    if (expert !== "both") lora.expert = expert;
    loras.push(lora);
  }
  return loras;
}

// Fields of the input the form has no control for (task_options, interpolation, ...): kept as JSON.
function extraInput(form) {
  const text = form.elements.extra.value.trim();
  if (!text) return {};
  let extra;
  try {
    extra = JSON.parse(text);
  } catch (err) {
    throw new Error(`More fields: not JSON (${err.message})`);
  }
  if (!extra || typeof extra !== "object" || Array.isArray(extra)) throw new Error("More fields: give a JSON object");
  return extra;
}

async function submit(event) {
  event.preventDefault();
  const form = event.target;
  const status = $("#submit-status");
  const button = $("#submit");
  button.disabled = true;
  try {
    const input = extraInput(form);
    status.textContent = "Uploading inputs...";
    for (const name of TEXTS) if (form.elements[name].value) input[name] = form.elements[name].value;
    for (const [name, parse] of Object.entries(NUMBERS)) input[name] = parse(form.elements[name].value, 10);
    for (const field of MEDIA) {
      const urls = await uploaded(form, field);
      if (urls.length) input[field] = urls[0];
    }
    const refs = await uploaded(form, "reference_images");
    if (refs.length) input.reference_images = refs;
    const loras = loraInput();
    if (loras.length) input.loras = loras;
    status.textContent = "Submitting...";
    const model = encodeURIComponent(form.elements.model.value);
    const created = await api(`/v1/models/vace/${model}/predictions`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ input }),
    });
    status.textContent = `Submitted ${created.id}.`;
  } catch (err) {
    status.textContent = err instanceof NeedKey ? "Enter the API key, then submit again." : `Refused: ${err.message}`;
  }
  button.disabled = false;
}

async function runAgain(id) {
  const form = $("#playground-form");
  try {
    const p = await api(`/web/api/predictions/${encodeURIComponent(id)}?preview=0`);
    const input = { ...p.rerun };
    if ([...form.elements.model.options].some((o) => o.value === p.model)) form.elements.model.value = p.model;
    for (const name of [...TEXTS, ...Object.keys(NUMBERS)]) {
      if (name in input) form.elements[name].value = input[name];
      else if (name === "task") form.elements.task.value = "";
      delete input[name];
    }
    for (const field of [...MEDIA, "reference_images"]) {
      form.elements[`${field}_file`].value = "";
      const value = input[field];
      form.elements[`${field}_url`].value = Array.isArray(value) ? value.join("\n") : value || "";
      delete input[field];
    }
    $("#lora-rows").replaceChildren();
    for (const lora of input.loras || []) addLoraRow(lora);
    delete input.loras;
    form.elements.extra.value = Object.keys(input).length ? JSON.stringify(input, null, 1) : "";
    $("#more-fields").open = Object.keys(input).length > 0;
    $("#submit-status").textContent = `Filled in from ${id}.`;
    $("#playground").scrollIntoView();
  } catch (err) {
    if (!(err instanceof NeedKey)) alert(`Could not load ${id}: ${err.message}`);
  }
}

async function olderHistory() {
  if (!historyCursor) return;
  const data = await api(`/web/api/predictions?state=finished&cursor=${encodeURIComponent(historyCursor)}`);
  for (const p of data.results) update(p);
  setHistoryCursor(data.next);
}

// ---- start --------------------------------------------------------------------------------------------------

function start() {
  $("#auth-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("#auth-key").value);
    $("#auth-key").value = "";
    $("#auth").hidden = true;
    follow();
    loadLoraNames();
  });
  $("#playground-form")?.addEventListener("submit", submit);
  $("#lora-add")?.addEventListener("click", () => addLoraRow());
  $("#history-more")?.addEventListener("click", () => olderHistory().catch((err) => console.warn(err)));
  if (page.authRequired === "true" && !sessionStorage.getItem(KEY)) askKey();
  else {
    follow();
    loadLoraNames();
  }
}

start();
