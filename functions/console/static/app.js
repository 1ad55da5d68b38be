/* Kinfer console: one page over the public API, same origin.
 *
 * Rules this file keeps: every value from the API reaches the page as text (text nodes and
 * textContent, never parsed as markup); the API key lives in sessionStorage and travels only in the
 * Authorization header; links built from API values are http(s) only.
 *
 * Views have addresses (hash routes, so a reload or a shared link opens the same view):
 *   #/models?q=iris&framework=onnx&status=active&page=2   #/models/<name>   #/try?model=<name>
 *   #/backends   #/batch?q=iris&status=completed&page=2   #/batch/<job id>
 *   #/audit?model=iris&action=alias&cursor=<id> (admin keys only)   #/capture (capture rules; admin keys edit)
 * A list view costs one API request (the model list carries its aliases: include=aliases), and a failed
 * request is shown in the view with its status, error code, message and request id, never hidden.
 */
"use strict";

const KEY_STORE = "kinfer.apiKey";
const POLL_BACKENDS_MS = 5000;
const POLL_BATCH_MS = 1500;
const MAX_BATCH_FILE_BYTES = 8 * 1024 * 1024;
const SPARK_POINTS = 60;
const MODELS_PAGE = 20;
const JOBS_PAGE = 10;
const MAX_PAGE = 100000;
const VIEWS = ["models", "try", "backends", "batch", "capture", "audit"];
const AUDIT_PAGE = 50;

const state = { key: null, me: null, view: "models", models: [], timers: {}, rates: {} };

/* ---------- small DOM helpers (text only) ---------- */
function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = String(value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }

function badge(text, tone) { return el("span", { class: `badge ${tone}`, text }); }

function toast(text) {
  const box = $("toast");
  box.textContent = text;
  clearTimeout(state.timers.toast);
  state.timers.toast = setTimeout(() => { box.textContent = ""; }, 5000);
}

function safeHttpUrl(raw) {
  try {
    const url = new URL(raw, window.location.href);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch (e) { return null; }
}

function when(iso) {
  if (!iso) return "never";
  const t = new Date(iso);
  if (Number.isNaN(t.getTime())) return String(iso);
  const ago = Math.round((Date.now() - t.getTime()) / 1000);
  return ago < 90 ? `${Math.max(ago, 0)} s ago` : t.toLocaleString();
}

/* ---------- the API ---------- */
class ApiError extends Error {
  constructor(status, body, headers) {
    const b = body && typeof body === "object" ? body : {};
    super(b.error || `HTTP ${status}`);
    this.status = status;
    this.code = b.code || (status === 0 ? "network_error" : "http_error");
    this.field = b.field || null;
    this.requestId = b.request_id || (headers && headers.get("X-Request-ID")) || null;
    this.traceId = b.trace_id || null;
    this.retryAfter = (headers && headers.get("Retry-After")) || null;
  }
  describe() {
    const parts = [`${this.status || "no answer"} ${this.code}: ${this.message}`];
    if (this.field) parts.push(`field: ${this.field}`);
    if (this.retryAfter) parts.push(`retry after: ${this.retryAfter} s`);
    parts.push(`request id: ${this.requestId || (this.status ? "none" : "none (no answer from the API)")}`);
    return parts.join("\n");
  }
}

/* A failed request, as the views show it: status, error code, message, field and request id, as text. */
function errorBlock(e) {
  const err = e instanceof ApiError ? e : new ApiError(0, { error: String((e && e.message) || e), code: "client_error" });
  return el("pre", { class: "error api-error", role: "alert", "data-status": err.status, "data-code": err.code,
    "data-request-id": err.requestId || "", text: err.describe() });
}

async function api(method, path, body, key) {
  const headers = { "Authorization": `Bearer ${key || state.key}` };
  const init = { method, headers, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer" };
  if (body !== undefined) { headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
  let resp;
  const started = performance.now();
  try {
    resp = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, { error: "the API did not answer (network error)" }, null);
  }
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = { error: text.slice(0, 300) }; }
  if (!resp.ok) {
    const err = new ApiError(resp.status, data, resp.headers);
    if (resp.status === 401 && !key) signOut("Your API key was refused (" + err.message + "). Sign in again.");
    throw err;
  }
  return { status: resp.status, body: data, headers: resp.headers, ms: performance.now() - started };
}

const enc = encodeURIComponent;

/* ---------- sign in / out ---------- */
function isAdmin() { return !!state.me && state.me.scopes.includes("admin"); }

async function signIn(key) {
  const err = $("signin-error");
  err.textContent = "";
  try {
    const me = await api("GET", "/v1/keys/self", undefined, key);
    state.key = key;
    state.me = me.body;
    sessionStorage.setItem(KEY_STORE, key);
    showApp();
  } catch (e) {
    if (e.status === 401) err.textContent = `This API key was refused: ${e.message}. Check the key and try again.`;
    else if (e.status === 429) err.textContent = `Too many requests for this key; wait a moment. (${e.message})`;
    else err.textContent = `Could not check the key: ${e.describe()}`;
    $("key").focus();
  }
}

function signOut(message) {
  sessionStorage.removeItem(KEY_STORE);
  state.key = null; state.me = null;
  state.gen = (state.gen || 0) + 1;
  stopTimers();
  $("nav").hidden = true; $("who").hidden = true;
  for (const v of document.querySelectorAll(".view")) v.hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = message || "";
  $("key").value = "";
  $("key").focus();
}

function showApp() {
  $("signin").hidden = true;
  $("nav").hidden = false; $("who").hidden = false;
  $("who-name").textContent = `${state.me.name} (${state.me.scopes.join(", ")})`;
  $("nav-audit").hidden = !isAdmin();
  $("key").value = "";
  route();
}

/* ---------- views and their addresses ---------- */
function stopTimers() {
  for (const name of ["backends", "batch"]) { clearTimeout(state.timers[name]); state.timers[name] = null; }
}

function safeDecode(part) {
  try { return decodeURIComponent(part); } catch (e) { return part; }
}

/* "#/models/iris?page=2" -> { view: "models", id: "iris", params: URLSearchParams("page=2") } */
function parseHash(hash) {
  const raw = (hash || "").replace(/^#\/?/, "");
  const cut = raw.indexOf("?");
  const path = cut < 0 ? raw : raw.slice(0, cut);
  const parts = path.split("/").filter(Boolean).map(safeDecode);
  const view = VIEWS.includes(parts[0]) ? parts[0] : "models";
  return { view, id: parts[0] === view ? parts[1] || null : null, params: new URLSearchParams(cut < 0 ? "" : raw.slice(cut + 1)) };
}

function address(view, id, params) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params || {})) {
    if (value !== null && value !== undefined && value !== "" && !(name === "page" && Number(value) === 1)) {
      query.set(name, String(value));
    }
  }
  const tail = query.toString();
  return `#/${view}${id ? `/${enc(id)}` : ""}${tail ? `?${tail}` : ""}`;
}

function navigate(hash) {
  if (window.location.hash === hash) route(); else window.location.hash = hash;
}

function pageParam(params) {
  const n = Number(params.get("page") || "1");
  return Number.isInteger(n) && n >= 1 && n <= MAX_PAGE ? n : 1;
}

function route() {
  if (!state.key) return;
  const { view, id, params } = parseHash(window.location.hash);
  state.view = view;
  state.gen = (state.gen || 0) + 1;  /* a poll of an earlier view stops at its next turn */
  stopTimers();
  for (const b of document.querySelectorAll("nav button")) {
    if (b.dataset.view === view) b.setAttribute("aria-current", "page"); else b.removeAttribute("aria-current");
  }
  for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== `view-${view}`;
  if (view === "models") { if (id) loadModel(id); else loadModels(params); }
  if (view === "try") loadTryModels(params.get("model"));
  if (view === "backends") pollBackends();
  if (view === "batch") { loadBatchModels(); if (id) pollJob(id); else pollBatch(params); }
  if (view === "audit") loadAudit(params);
  if (view === "capture") loadCapture();
}

function pager(box, label, total, page, size, hrefOf) {
  clear(box);
  const pages = Math.max(1, Math.ceil(total / size));
  box.hidden = total <= size && page === 1;
  const link = (text, n, cls) => (n >= 1 && n <= pages && n !== page
    ? el("a", { href: hrefOf(n), class: cls, text, "aria-label": `${label}: page ${n}` })
    : el("span", { class: `${cls} off`, text, "aria-disabled": "true" }));
  /* past the last page, "Previous" goes to the last one */
  box.append(link("← Previous", Math.min(page - 1, pages), "prev"),
    el("span", { class: "page-of", text: `page ${page} of ${pages}` }), link("Next →", page + 1, "next"));
}

/* ---------- models ---------- */
async function fetchModels() {  /* the pickers of Try it and Batch: one request, aliases included */
  const resp = await api("GET", "/v1/models?limit=500&include=aliases");
  state.models = resp.body.models;
  return state.models;
}

function groupByName(models) {
  const names = new Map();
  for (const m of models) {
    if (!names.has(m.name)) names.set(m.name, []);
    names.get(m.name).push(m);
  }
  return [...names.entries()].sort((a, b) => a[0].localeCompare(b[0]));
}

function stateBadge(m) {
  const tone = { ready: "ok", loading: "warn", pending: "warn", awaiting_upload: "muted", failed: "bad" }[m.state];
  return badge(m.state || "unknown", tone || "muted");
}

function shadowText(shadow) {
  return Object.entries(shadow || {}).map(([v, p]) => `${v}=${p}%`).join(", ") || "none";
}

function splitText(versions) {
  const entries = Object.entries(versions || {});
  if (entries.length === 1 && entries[0][1] === 100) return `→ ${entries[0][0]}`;
  return "→ " + entries.map(([v, w]) => `${v}=${w}%`).join(", ");
}

function modelFilters(params) {
  return { q: params.get("q") || "", framework: params.get("framework") || "", status: params.get("status") || "" };
}

async function loadModels(params) {
  const filters = modelFilters(params || new URLSearchParams());
  const page = pageParam(params || new URLSearchParams());
  const gen = state.gen;
  $("models-filter").hidden = false;
  $("models-back").hidden = true;
  $("models-q").value = filters.q; $("models-framework").value = filters.framework; $("models-status").value = filters.status;
  const list = $("models-list");
  const note = $("models-note");
  note.textContent = "Loading…";
  const query = new URLSearchParams({ limit: MODELS_PAGE, offset: (page - 1) * MODELS_PAGE, include: "aliases" });
  for (const [name, value] of Object.entries(filters)) if (value) query.set(name, value);
  try {
    const body = (await api("GET", `/v1/models?${query}`)).body;
    if (gen !== state.gen) return;  /* the view changed meanwhile */
    const groups = groupByName(body.models);
    clear(list);
    for (const [name, versions] of groups) list.append(modelCard(name, versions, versions[0].aliases || []));
    const last = Math.max(1, Math.ceil(body.total / MODELS_PAGE));
    const past = !groups.length && body.total > 0;  /* a page beyond the end: no range to show */
    if (past) {
      list.append(el("p", { class: "note past-end" }, `Page ${page} is past the last page (${last}): `,
        el("a", { href: address("models", null, { ...filters, page: last }), text: `go to page ${last}` })));
    } else if (!groups.length) {
      list.append(el("p", { class: "note", text: filters.q || filters.framework || filters.status
        ? "No model matches these filters." : "No models yet: register one with kinfer models push." }));
    }
    const first = body.total ? body.offset + 1 : 0;
    note.textContent = (past ? `Page ${page} is past the last page (${last}); there are ${body.total} version(s).`
      : `${body.models.length} version(s) of ${groups.length} model(s) shown` +
        ` (${first}–${body.offset + body.models.length} of ${body.total} version(s)).`) +
      (isAdmin() ? "" : " Your key has no admin scope: promote, rollback and splits are hidden.");
    pager($("models-pager"), "Models", body.total, page, MODELS_PAGE, n => address("models", null, { ...filters, page: n }));
  } catch (e) {
    if (gen !== state.gen) return;
    note.textContent = "";
    $("models-pager").hidden = true;
    clear(list).append(errorBlock(e));
  }
}

async function loadModel(name) {  /* #/models/<name>: every version of one name, and its aliases */
  const gen = state.gen;
  $("models-filter").hidden = true;
  $("models-pager").hidden = true;
  const back = $("models-back");
  back.hidden = false;
  const list = $("models-list");
  const note = $("models-note");
  note.textContent = "Loading…";
  try {
    const body = (await api("GET", `/v1/models?${new URLSearchParams({ name, limit: 500, include: "aliases" })}`)).body;
    if (gen !== state.gen) return;
    clear(list);
    note.textContent = body.models.length ? `${body.models.length} version(s) of ${name}.` : "";
    if (!body.models.length) {
      list.append(el("p", { class: "error", role: "alert", text: `No model is named ${name}.` }));
      return;
    }
    list.append(modelCard(name, body.models, body.models[0].aliases || []));
  } catch (e) {
    if (gen !== state.gen) return;
    note.textContent = "";
    clear(list).append(errorBlock(e));
  }
}

/* Where Triton serves a version: its Triton version, with the Triton model when that is not the name
   (a version with another config lives in a Triton model of its own, such as linear.v4:1). */
function tritonText(m) {
  if (m.triton_version === null || m.triton_version === undefined) return "–";
  return m.triton_model && m.triton_model !== m.name ? `${m.triton_model}:${m.triton_version}` : String(m.triton_version);
}

function modelCard(name, versions, aliases) {
  const message = el("p", { class: "model-message", role: "status" });
  const card = el("article", { class: "card model", "data-model": name });
  card.append(el("h3", { class: "model-name" }, el("a", { href: address("models", name), text: name })));
  const aliasBox = el("div", { class: "aliases" });
  if (!aliases.length) aliasBox.append(el("span", { class: "note", text: "no aliases: the newest ready version serves" }));
  for (const a of aliases) {
    const item = el("span", { class: "alias", "data-alias": a.alias },
      el("strong", { text: a.alias }), " ", el("span", { class: "split-text", text: splitText(a.versions) }));
    if (a.shadow && Object.keys(a.shadow).length) {
      item.append(" ", el("span", { class: "note shadow-text", text: `shadow ${shadowText(a.shadow)}` }));
    }
    if (isAdmin()) {
      item.append(" ", el("button", { type: "button", class: "quiet gates", text: "Gates",
        "aria-label": `Shadow versions and rollout of alias ${a.alias} of ${name}`,
        onclick: () => showGates(message, name, a.alias) }));
    }
    if (isAdmin() && a.previous) {
      item.append(" ", el("button", { type: "button", class: "quiet rollback", text: "Roll back",
        "aria-label": `Roll back alias ${a.alias} of ${name}`,
        onclick: () => aliasAction(message, "POST", `/v1/models/by-name/${enc(name)}/aliases/${enc(a.alias)}/rollback`) }));
    }
    aliasBox.append(item);
  }
  card.append(aliasBox);
  const rows = versions.map(m => el("tr", { "data-version": m.version },
    el("td", { class: "mono", text: m.version }),
    el("td", {}, stateBadge(m), m.state_reason ? el("div", { class: "note", text: m.state_reason }) : null),
    el("td", { text: m.status }),
    el("td", { class: "mono triton", text: tritonText(m) }),
    el("td", { text: m.description || "" }),
    isAdmin() ? el("td", {}, el("button", { type: "button", class: "quiet promote", text: "Promote",
      "aria-label": `Promote ${name} version ${m.version} to production`,
      onclick: () => aliasAction(message, "PUT", `/v1/models/by-name/${enc(name)}/aliases/production`,
        { version: m.version }) })) : null));
  card.append(el("div", { class: "scroll" }, el("table", {},
    el("thead", {}, el("tr", {}, ["Version", "State", "Status", "Triton", "Description"].map(h =>
      el("th", { scope: "col", text: h })), isAdmin() ? el("th", { scope: "col", text: "Production" }) : null)),
    el("tbody", {}, rows))));
  if (isAdmin()) card.append(splitForm(name, versions, aliases, message));
  card.append(message);
  return card;
}

function splitForm(name, versions, aliases, message) {
  const ready = versions.filter(m => m.state === "ready" && m.status === "active");
  if (ready.length < 2) return el("p", { class: "note", text: "A split needs two ready versions." });
  const uid = `split-${name.replace(/[^A-Za-z0-9_-]/g, "_")}`;
  const current = (aliases.find(a => a.alias === "production") || {}).versions || {};
  const aliasInput = el("input", { id: `${uid}-alias`, value: "production", maxlength: 64, spellcheck: "false" });
  const fields = ready.map(m => {
    const input = el("input", { id: `${uid}-v-${m.version}`, type: "number", min: 0, max: 100, step: 1,
      inputmode: "numeric", value: current[m.version] ?? 0, "data-version": m.version });
    return el("div", {}, el("label", { for: input.id, text: `v${m.version} %` }), input);
  });
  const form = el("form", { class: "split" },
    el("div", {}, el("label", { for: aliasInput.id, text: "Alias" }), aliasInput), fields,
    el("button", { type: "submit", text: "Set split" }));
  form.addEventListener("submit", ev => {
    ev.preventDefault();
    const split = {};
    for (const input of form.querySelectorAll("input[data-version]")) {
      const n = Number(input.value);
      if (n > 0) split[input.dataset.version] = n;
    }
    const alias = aliasInput.value.trim() || "production";
    aliasAction(message, "PUT", `/v1/models/by-name/${enc(name)}/aliases/${enc(alias)}`, { versions: split });
  });
  return form;
}

/* An alias's shadow pairs (agreement, difference, latency) and its automatic rollout, with its controls. */
async function showGates(message, name, alias) {
  const base = `/v1/models/by-name/${enc(name)}/aliases/${enc(alias)}`;
  message.className = "model-message gates-panel";
  message.textContent = "Loading…";
  try {
    const shadow = (await api("GET", `${base}/shadow`)).body;
    let rollout = null;
    try {
      rollout = (await api("GET", `${base}/rollout`)).body;
    } catch (e) {
      if (e.status !== 404) throw e;
    }
    clear(message);
    const pairs = shadow.pairs.map(p => el("tr", {},
      ["primary", "shadow", "mirrored", "agreement", "max_abs_difference", "errors", "dropped",
        "shadow_latency_ms", "primary_latency_ms"].map(k => el("td", { class: "mono", text: p[k] ?? "–" }))));
    message.append(el("strong", { text: `${alias}: shadow ${shadowText(shadow.shadow)}` }));
    if (pairs.length) {
      message.append(el("div", { class: "scroll" }, el("table", { class: "shadow-pairs" },
        el("thead", {}, el("tr", {}, ["Primary", "Shadow", "Mirrored", "Agreement", "Max diff", "Errors", "Dropped",
          "Shadow ms", "Primary ms"].map(h => el("th", { scope: "col", text: h })))),
        el("tbody", {}, pairs))));
    }
    if (!rollout) {
      message.append(el("p", { class: "note", text: "No automatic rollout (kinfer models rollout start)." }));
      return;
    }
    message.append(el("p", { class: "rollout-state",
      text: `rollout to ${rollout.candidate}: ${rollout.state} at ${rollout.percent} % — ${rollout.reason}` }));
    for (const verb of rollout.state === "running" ? ["pause", "abort"] : rollout.state === "paused" ? ["resume", "abort"] : []) {
      message.append(el("button", { type: "button", class: `quiet rollout-${verb}`, text: verb[0].toUpperCase() + verb.slice(1),
        onclick: async () => {
          try {
            await api("POST", `${base}/rollout/${verb}`);
            toast(`rollout of ${alias} of ${name}: ${verb}`);
            showGates(message, name, alias);
          } catch (e) {
            message.className = "model-message error";
            message.textContent = e.describe();
          }
        } }), " ");
    }
  } catch (e) {
    message.className = "model-message error";
    message.textContent = e.describe();
  }
}

async function aliasAction(message, method, path, body) {
  message.className = "model-message";
  message.textContent = "Working…";
  try {
    const r = await api(method, path, body);
    toast(`alias ${r.body.alias} of ${r.body.name} ${splitText(r.body.versions)}`);
    route();
  } catch (e) {
    message.className = "model-message error";
    message.textContent = e.describe();
    /* the versions have other inputs or outputs: the message names the difference; moving anyway is a second,
       explicit click that resends the same move with allow_signature_change */
    if (e.status === 409 && e.code === "signature_mismatch" && body && !body.allow_signature_change) {
      message.append(el("span", { class: "signature-confirm" },
        el("span", { text: "Its callers would get answers of another shape. " }),
        el("button", { type: "button", class: "danger allow-signature-change", text: "Allow signature change",
          onclick: () => aliasAction(message, method, path, { ...body, allow_signature_change: true }) }),
        " ",
        el("button", { type: "button", class: "quiet", text: "Cancel",
          onclick: () => { message.className = "model-message"; message.textContent = ""; } })));
    }
  }
}

/* ---------- try it ---------- */
function fillModelSelect(select, models) {
  const previous = select.value;
  clear(select);
  for (const [name] of groupByName(models)) select.append(el("option", { value: name, text: name }));
  if (previous && [...select.options].some(o => o.value === previous)) select.value = previous;
}

async function loadTryModels(model) {
  try {
    const select = $("try-model");
    fillModelSelect(select, await fetchModels());
    if (model && [...select.options].some(o => o.value === model)) select.value = model;
    fillVersions();
  } catch (e) { showTryError(e); }
}

function fillVersions() {
  const name = $("try-model").value;
  const select = clear($("try-version"));
  select.append(el("option", { value: "", text: "default (production, else newest ready)" }));
  if (!name) return;
  const versions = state.models.filter(x => x.name === name);
  for (const a of (versions[0] && versions[0].aliases) || []) {
    select.append(el("option", { value: a.alias, text: `alias ${a.alias} ${splitText(a.versions)}` }));
  }
  for (const m of versions) {
    select.append(el("option", { value: m.version, text: `version ${m.version} (${m.state})` }));
  }
}

function exampleFor(shape, datatype) {
  const dims = shape.map(d => (d < 0 ? 1 : Math.min(d, 8)));
  const leaf = datatype === "BYTES" ? "some text" : 0;
  const build = depth => (depth === dims.length ? leaf : Array.from({ length: dims[depth] }, () => build(depth + 1)));
  return dims.length ? build(0) : leaf;
}

/* A string tensor (BYTES) takes JSON strings; text that is not a JSON list or string is one string as typed. */
function tensorValue(area) {
  const text = area.value;
  if (area.dataset.datatype !== "BYTES") return JSON.parse(text);
  try {
    const value = JSON.parse(text);
    if (Array.isArray(value) || typeof value === "string") return value;
  } catch (e) { /* plain text */ }
  return [text];
}

async function loadTryForm(ev) {
  ev.preventDefault();
  const name = $("try-model").value;
  const version = $("try-version").value;
  $("try-result").hidden = true;
  try {
    const path = `/v2/models/${enc(name)}` + (version ? `/versions/${enc(version)}` : "");
    const meta = (await api("GET", path)).body;
    const box = clear($("try-inputs"));
    $("try-form-title").textContent = `${meta.name}${version ? ` (${version})` : ""}: inputs`;
    for (const input of meta.inputs) {
      const id = `try-in-${input.name.replace(/[^A-Za-z0-9_-]/g, "_")}`;
      const strings = input.datatype === "BYTES";
      const area = el("textarea", { id, "data-tensor": input.name, "data-datatype": input.datatype, rows: 3,
        spellcheck: strings ? "true" : "false" });
      area.value = JSON.stringify(exampleFor(input.shape, input.datatype));
      const what = strings ? 'JSON strings (["one", "two"]: one per row), or plain text: one string'
        : "JSON numbers";
      box.append(el("div", {}, el("label", { for: id, text: input.name }),
        el("p", { class: "note", text: `${input.datatype}, shape [${input.shape.join(", ")}] (-1: any length); ${what}` }),
        area));
    }
    const outs = meta.outputs.map(o => `${o.name} ${o.datatype} [${o.shape.join(", ")}]`).join("; ");
    box.append(el("p", { class: "note", text: `outputs: ${outs}` }));
    const form = $("try-form");
    form.dataset.model = name; form.dataset.version = version;
    form.hidden = false;
    box.querySelector("textarea")?.focus();
  } catch (e) { showTryError(e); }
}

async function runPrediction(ev) {
  ev.preventDefault();
  const form = $("try-form");
  const input = {};
  for (const area of form.querySelectorAll("textarea[data-tensor]")) {
    try { input[area.dataset.tensor] = tensorValue(area); } catch (e) {
      showTryError(new ApiError(0, { error: `${area.dataset.tensor} is not valid JSON: ${e.message}`, code: "invalid_json" }));
      area.focus();
      return;
    }
  }
  const body = { model: form.dataset.model, input };
  if (form.dataset.version) body.version = form.dataset.version;
  $("try-run").disabled = true;
  try {
    const r = await api("POST", "/v1/infer", body);
    const a = r.body;
    const box = clear($("try-result"));
    box.hidden = false;
    box.append(el("h3", { text: "Prediction" }), el("pre", { class: "prediction", text: JSON.stringify(a.prediction) }),
      el("dl", { class: "kv" },
        el("dt", { text: "model" }), el("dd", { text: a.model }),
        el("dt", { text: "version that answered" }),
        el("dd", { class: "answered-version", text: r.headers.get("X-Model-Version") || a.version }),
        el("dt", { text: "latency (server)" }), el("dd", { text: `${a.latency_ms} ms` }),
        el("dt", { text: "round trip" }), el("dd", { text: `${r.ms.toFixed(1)} ms` }),
        el("dt", { text: "request id" }), el("dd", { class: "mono", text: r.headers.get("X-Request-ID") || a.request_id }),
        el("dt", { text: "trace id" }), el("dd", { class: "mono", text: r.headers.get("X-Trace-ID") || a.trace_id || "" })),
      el("h3", { text: "Outputs" }), el("pre", { text: JSON.stringify(a.outputs, null, 1) }));
  } catch (e) { showTryError(e); } finally { $("try-run").disabled = false; }
}

function showTryError(e) {
  const box = clear($("try-result"));
  box.hidden = false;
  box.append(el("h3", { text: "Error" }), errorBlock(e));
}

/* ---------- backends ---------- */
function circuitBadge(circuit) {
  return badge(circuit, { closed: "ok", "half-open": "warn", open: "bad" }[circuit] || "muted");
}

function sparkline(points) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark"); svg.setAttribute("viewBox", "0 0 100 30");
  svg.setAttribute("preserveAspectRatio", "none"); svg.setAttribute("role", "img");
  const last = points.length ? points[points.length - 1] : 0;
  svg.setAttribute("aria-label", `requests per second, last ${points.length} readings, now ${last}`);
  const base = document.createElementNS(ns, "line");
  base.setAttribute("x1", "0"); base.setAttribute("x2", "100"); base.setAttribute("y1", "29"); base.setAttribute("y2", "29");
  svg.append(base);
  if (points.length > 1) {
    const top = Math.max(...points, 1);
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points.map((p, i) =>
      `${(i * 100 / (SPARK_POINTS - 1)).toFixed(1)},${(29 - (p / top) * 27).toFixed(1)}`).join(" "));
    svg.append(line);
  }
  return svg;
}

function seconds(s) { return s >= 90 ? `${Math.round(s / 60)} min` : `${Math.round(s)} s`; }

/* A backend that scales to zero (the local activator) is not down while it wakes: it holds requests. */
function wakeText(b) {
  const since = b.state_since ? Date.parse(b.state_since) : NaN;
  const waited = Number.isNaN(since) ? null : Math.max(0, (Date.now() - since) / 1000);
  const parts = [waited === null ? "starting" : `starting for ${seconds(waited)}`];
  if (b.wake_estimate_s !== null && b.wake_estimate_s !== undefined) {
    const left = waited === null ? b.wake_estimate_s : Math.max(0, b.wake_estimate_s - waited);
    parts.push(`the last wake took ${seconds(b.wake_estimate_s)}` + (left > 0 ? `: about ${seconds(left)} to go` : ": any moment now"));
  } else {
    parts.push("no estimate yet (its first wake)");
  }
  return parts.join("; ") + ". Its connections are held meanwhile; callers with Prefer: wait get their answer once it serves.";
}

function probeCell(b) {
  if (b.state === "waking") {
    return el("td", { class: "probe" }, badge("waking", "warn"), el("div", { class: "note wake", text: wakeText(b) }));
  }
  if (b.state === "idle-stopped") {
    return el("td", { class: "probe" }, badge("scaled to zero", "muted"),
      el("div", { class: "note", text: "the next request wakes it" + (b.wake_estimate_s ? ` (the last wake took ${seconds(b.wake_estimate_s)})` : "") }));
  }
  if (b.state === "stopping") return el("td", { class: "probe" }, badge("scaling to zero", "muted"));
  const probe = b.last_probe === null ? badge("not probed", "muted")
    : badge(b.healthy ? "ready" : "not ready", b.healthy ? "ok" : "bad");
  return el("td", { class: "probe" }, probe, el("div", { class: "note", text: when(b.last_probe) }),
    b.reason && !b.healthy ? el("div", { class: "note", text: b.reason }) : null);
}

async function pollBackends() {
  if (state.view !== "backends" || !state.key) return;
  const gen = state.gen;
  try {
    const data = (await api("GET", "/v1/backends?window_s=60")).body;
    clear($("backends-error"));
    const tbody = clear($("backends-table").querySelector("tbody"));
    for (const b of data.backends) {
      const series = state.rates[b.url] || (state.rates[b.url] = []);
      series.push(b.requests_per_s ?? 0);
      if (series.length > SPARK_POINTS) series.shift();
      tbody.append(el("tr", { "data-backend": b.url, "data-state": b.state || "" },
        el("td", { class: "mono" }, b.url, el("div", { class: "note", text: (b.models || []).join(", ") })),
        el("td", { class: "circuit" }, circuitBadge(b.circuit),
          b.failures ? el("div", { class: "note", text: `${b.failures} failure(s)` }) : null),
        probeCell(b),
        el("td", { class: "num", text: b.p50_ms === null ? "–" : `${b.p50_ms} ms` }),
        el("td", { class: "num", text: b.requests_per_s === null ? "–" : String(b.requests_per_s) }),
        el("td", {}, sparkline(series))));
    }
    $("backends-updated").textContent = `updated ${new Date().toLocaleTimeString()}` +
      (data.window_s ? `, over the last ${Math.round(data.window_s)} s` : "");
  } catch (e) {
    clear($("backends-error")).append(errorBlock(e));
  }
  if (state.view === "backends" && gen === state.gen) state.timers.backends = setTimeout(pollBackends, POLL_BACKENDS_MS);
}

/* ---------- batch ---------- */
async function loadBatchModels() {
  try { fillModelSelect($("batch-model"), await fetchModels()); } catch (e) { clear($("batch-message")).append(errorBlock(e)); }
}

function jobCard(job) {
  const pct = Math.round((job.progress || 0) * 100);
  const active = job.status === "pending" || job.status === "processing";
  const tone = { completed: job.failed ? "warn" : "ok", failed: "bad", cancelled: "muted" }[job.status] || "warn";
  const message = el("p", { role: "status" });
  const card = el("article", { class: "card job", "data-job": job.job_id, "data-status": job.status },
    el("div", { class: "job-head" },
      el("span", {}, el("strong", { text: `${job.model} ${job.version}` }), " ",
        el("a", { class: "mono note job-link", href: address("batch", job.job_id), text: job.job_id })),
      badge(job.status, tone)),
    el("label", { for: `p-${job.job_id}`, class: "note", text: `${pct}% · ${job.completed} of ${job.total} processed · ` +
      `${job.succeeded} succeeded · ${job.failed} failed` }),
    el("progress", { id: `p-${job.job_id}`, max: 100, value: pct, "data-progress": pct }));
  if (job.error) card.append(el("p", { class: "error", text: job.error }));
  if (job.errors && job.errors.length) {
    card.append(el("details", {}, el("summary", { text: `first errors (${job.errors.length})` }),
      el("pre", { text: job.errors.slice(0, 5).map(x => JSON.stringify(x)).join("\n") })));
  }
  const actions = el("div", { class: "actions" });
  if (active) {
    actions.append(el("button", { type: "button", class: "danger cancel", text: "Cancel",
      "aria-label": `Cancel job ${job.job_id}`, onclick: async ev => {
        ev.target.disabled = true;
        try { await api("DELETE", `/v1/batch/${enc(job.job_id)}`); route(); }
        catch (e) { clear(message).append(errorBlock(e)); ev.target.disabled = false; }
      } }));
  }
  const href = job.result_url ? safeHttpUrl(job.result_url) : null;
  if (href) actions.append(el("a", { href, class: "download", rel: "noopener noreferrer", target: "_blank",
    download: `results-${job.job_id}.jsonl`, text: "Download results" }));
  card.append(actions, message);
  return card;
}

function jobFilters(params) {
  return { q: params.get("q") || "", status: params.get("status") || "" };
}

function isActive(job) { return job.status === "pending" || job.status === "processing"; }

/* #/audit: a page of the audit log (admin keys), newest first; "Older" follows the API's cursor. */
function auditValue(value) {
  return value === null || value === undefined ? "–" : JSON.stringify(value).slice(0, 300);
}

async function loadAudit(params) {
  const gen = state.gen;
  const filters = { model: params.get("model") || "", action: params.get("action") || "" };
  $("audit-model").value = filters.model; $("audit-action").value = filters.action;
  const tbody = clear($("audit-table").querySelector("tbody"));
  const note = $("audit-note");
  $("audit-pager").hidden = true;
  if (!isAdmin()) { note.textContent = "Only admin keys can read the audit log."; return; }
  note.textContent = "Loading…";
  const query = new URLSearchParams({ limit: AUDIT_PAGE });
  for (const [name, value] of Object.entries(filters)) if (value) query.set(name, value);
  if (params.get("cursor")) query.set("cursor", params.get("cursor"));
  try {
    const body = (await api("GET", `/v1/audit?${query}`)).body;
    if (gen !== state.gen) return;
    for (const e of body.entries) {
      tbody.append(el("tr", {},
        el("td", { text: new Date(e.at).toLocaleString() }),
        el("td", { text: e.actor_name, title: e.actor_key_id || "" }),
        el("td", {}, el("code", { text: e.action })),
        el("td", { text: e.target }),
        el("td", { class: "json", text: auditValue(e.before) }),
        el("td", { class: "json", text: auditValue(e.after) })));
    }
    note.textContent = body.entries.length ? `${body.total} entr${body.total === 1 ? "y" : "ies"}` +
      (filters.model || filters.action ? " match." : ".") : "No audit entries match.";
    const pager = clear($("audit-pager"));
    if (body.next_cursor) {
      pager.hidden = false;
      pager.append(el("a", { class: "next", href: address("audit", null, { ...filters, cursor: body.next_cursor }),
        text: "Older →" }));
    }
  } catch (e) {
    if (gen !== state.gen) return;
    note.textContent = "";
    clear(tbody);
    $("audit-pager").hidden = true;
    note.append(errorBlock(e));
  }
}

/* #/capture: every capture rule (any key reads them); admin keys set and delete them. */
async function loadCapture() {
  const gen = state.gen;
  const tbody = clear($("capture-table").querySelector("tbody"));
  const note = $("capture-note");
  $("capture-form").hidden = !isAdmin();
  note.textContent = "Loading…";
  try {
    const body = (await api("GET", "/v1/capture")).body;
    if (gen !== state.gen) return;
    for (const rule of body.settings) {
      const remove = isAdmin() ? el("button", { type: "button", class: "quiet", text: "Stop",
        "aria-label": `Stop capturing ${rule.model}${rule.alias ? "@" + rule.alias : ""}`,
        onclick: () => deleteCapture(rule) }) : null;
      tbody.append(el("tr", {},
        el("td", { text: rule.model }),
        el("td", { text: rule.alias || "every request" }),
        el("td", { text: `${rule.sample_percent} %` }),
        el("td", { text: rule.redact.join(", ") || "–" }),
        el("td", { text: rule.updated_at ? new Date(rule.updated_at).toLocaleString() : "–", title: rule.updated_by }),
        el("td", {}, remove)));
    }
    note.textContent = body.settings.length ? "" : "Nothing is captured: no model has a capture rule.";
  } catch (e) {
    if (gen !== state.gen) return;
    note.textContent = "";
    note.append(errorBlock(e));
  }
}

async function saveCapture(ev) {
  ev.preventDefault();
  const model = $("capture-model").value.trim();
  const body = { sample_percent: Number($("capture-percent").value),
    redact: $("capture-redact").value.split(",").map(f => f.trim()).filter(Boolean) };
  if ($("capture-alias").value.trim()) body.alias = $("capture-alias").value.trim();
  try {
    await api("PUT", `/v1/models/by-name/${enc(model)}/capture`, body);
    toast(`Capturing ${body.sample_percent} % of ${model}${body.alias ? "@" + body.alias : ""}.`);
    loadCapture();
  } catch (e) {
    $("capture-note").textContent = "";
    $("capture-note").append(errorBlock(e));
  }
}

async function deleteCapture(rule) {
  const query = rule.alias ? `?alias=${enc(rule.alias)}` : "";
  try {
    await api("DELETE", `/v1/models/by-name/${enc(rule.model)}/capture${query}`);
    toast(`Stopped capturing ${rule.model}${rule.alias ? "@" + rule.alias : ""}.`);
    loadCapture();
  } catch (e) {
    $("capture-note").textContent = "";
    $("capture-note").append(errorBlock(e));
  }
}

/* #/batch: a page of the key's jobs (filtered by model and status), polled while one of them runs. */
async function pollBatch(params, gen) {
  if (gen === undefined) gen = state.gen;
  if (gen !== state.gen || !state.key) return;
  const filters = jobFilters(params);
  const page = pageParam(params);
  $("batch-filter").hidden = false;
  $("batch-back").hidden = true;
  $("batch-q").value = filters.q; $("batch-status").value = filters.status;
  const query = new URLSearchParams({ limit: JOBS_PAGE, offset: (page - 1) * JOBS_PAGE });
  for (const [name, value] of Object.entries(filters)) if (value) query.set(name, value);
  const list = $("batch-list");
  let active = false;
  try {
    const body = (await api("GET", `/v1/batch?${query}`)).body;
    if (gen !== state.gen) return;
    clear(list);
    if (!body.jobs.length) {
      const text = body.total_count ? `Page ${page} is past the last page (${Math.ceil(body.total_count / JOBS_PAGE)}).`
        : filters.q || filters.status ? "No job matches these filters." : "No jobs yet.";
      list.append(el("p", { class: "note", text }));
    }
    for (const job of body.jobs) list.append(jobCard(job));
    $("batch-note").textContent = `${body.total_count} job(s)` + (filters.q || filters.status ? " match." : ".");
    pager($("batch-pager"), "Batch jobs", body.total_count, page, JOBS_PAGE, n => address("batch", null, { ...filters, page: n }));
    active = body.jobs.some(isActive);
  } catch (e) {
    if (gen !== state.gen) return;
    clear(list).append(errorBlock(e));
  }
  state.timers.batch = setTimeout(() => pollBatch(params, gen), active ? POLL_BATCH_MS : POLL_BATCH_MS * 4);
}

/* #/batch/<id>: one job, polled while it runs. */
async function pollJob(id, gen) {
  if (gen === undefined) gen = state.gen;
  if (gen !== state.gen || !state.key) return;
  $("batch-filter").hidden = true;
  $("batch-pager").hidden = true;
  $("batch-back").hidden = false;
  $("batch-note").textContent = "";
  const list = $("batch-list");
  let active = false;
  try {
    const job = (await api("GET", `/v1/batch/${enc(id)}`)).body;
    if (gen !== state.gen) return;
    clear(list).append(jobCard(job));
    active = isActive(job);
  } catch (e) {
    if (gen !== state.gen) return;
    clear(list).append(errorBlock(e));
    return;
  }
  if (active) state.timers.batch = setTimeout(() => pollJob(id, gen), POLL_BATCH_MS);
}

let batchFile = null;

function pickFile(file) {
  batchFile = file || null;
  $("batch-file-info").textContent = file ? `${file.name}, ${file.size} bytes` : "";
}

function parseJsonl(text) {
  const inputs = [];
  text.split(/\r?\n/).forEach((line, i) => {
    if (!line.trim()) return;
    let value;
    try { value = JSON.parse(line); } catch (e) { throw new Error(`line ${i + 1} is not JSON: ${e.message}`); }
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
      throw new Error(`line ${i + 1} must be a JSON object such as {"data": [...]}`);
    }
    inputs.push(value);
  });
  if (!inputs.length) throw new Error("the file has no input lines");
  return inputs;
}

async function submitBatch(ev) {
  ev.preventDefault();
  const msg = $("batch-message");
  msg.className = ""; msg.textContent = "";
  if (!batchFile) { msg.className = "error"; msg.textContent = "Pick or drop a JSONL file first."; return; }
  if (batchFile.size > MAX_BATCH_FILE_BYTES) {
    msg.className = "error"; msg.textContent = `The file is over ${MAX_BATCH_FILE_BYTES} bytes; use the API's uploads.`;
    return;
  }
  let inputs;
  try { inputs = parseJsonl(await batchFile.text()); } catch (e) { msg.className = "error"; msg.textContent = e.message; return; }
  const body = { model: $("batch-model").value, inputs };
  const version = $("batch-version").value.trim();
  if (version) body.version = version;
  $("batch-submit").disabled = true;
  try {
    const r = await api("POST", "/v1/batch", body);
    msg.className = "success";
    msg.textContent = `Job ${r.body.job_id} accepted: ${r.body.total} item(s).`;
    navigate(address("batch"));
  } catch (e) { clear(msg).append(errorBlock(e)); }
  finally { $("batch-submit").disabled = false; }
}

/* ---------- wiring ---------- */
function wire() {
  $("signin-form").addEventListener("submit", ev => {
    ev.preventDefault();
    const key = $("key").value.trim();
    if (key) signIn(key);
  });
  $("sign-out").addEventListener("click", () => signOut("Signed out."));
  for (const b of document.querySelectorAll("nav button")) b.addEventListener("click", () => navigate(address(b.dataset.view)));
  window.addEventListener("hashchange", route);
  $("models-refresh").addEventListener("click", route);
  $("models-filter").addEventListener("submit", ev => {
    ev.preventDefault();
    navigate(address("models", null, { q: $("models-q").value.trim(), framework: $("models-framework").value,
      status: $("models-status").value }));
  });
  for (const id of ["models-framework", "models-status"]) {
    $(id).addEventListener("change", () => $("models-filter").requestSubmit());
  }
  $("batch-filter").addEventListener("submit", ev => {
    ev.preventDefault();
    navigate(address("batch", null, { q: $("batch-q").value.trim(), status: $("batch-status").value }));
  });
  $("batch-status").addEventListener("change", () => $("batch-filter").requestSubmit());
  $("audit-filter").addEventListener("submit", ev => {
    ev.preventDefault();
    navigate(address("audit", null, { model: $("audit-model").value.trim(), action: $("audit-action").value.trim() }));
  });
  $("capture-form").addEventListener("submit", saveCapture);
  $("try-model").addEventListener("change", fillVersions);
  $("try-pick").addEventListener("submit", loadTryForm);
  $("try-form").addEventListener("submit", runPrediction);
  $("batch-form").addEventListener("submit", submitBatch);
  $("batch-refresh").addEventListener("click", route);
  $("batch-file").addEventListener("change", ev => pickFile(ev.target.files[0]));
  const drop = $("batch-drop");
  drop.addEventListener("dragover", ev => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", ev => {
    ev.preventDefault();
    drop.classList.remove("over");
    if (ev.dataTransfer && ev.dataTransfer.files.length) pickFile(ev.dataTransfer.files[0]);
  });
  const saved = sessionStorage.getItem(KEY_STORE);
  if (saved) signIn(saved); else $("key").focus();
}

document.addEventListener("DOMContentLoaded", wire);
