// The Event Management page (docs/page.md): counts, the filtered event table one page at a time, a live log
// view of one event, Terminate buttons. Every read and write goes through the REST API under scf/api/; the
// page refreshes from the server's change stream (scf/api/changes), at most once per REFRESH_MS, and never
// polls per row. Data reaches the DOM only as textContent or attribute values, never as markup.

const BASE = document.querySelector('meta[name="scf-base-url"]').content;
const API = `${BASE}scf/api/`;
const STATUSES = ["QUEUED", "RUNNING", "FINISHED", "FAILED", "ABORTED"];
const ACTIVE = new Set(["QUEUED", "RUNNING"]);
const REFRESH_MS = 1000;
const DRAW_MS = 100; // log lines are drawn in batches, at most this often
const PAGE_ARGS = new URLSearchParams(location.search);
const MAX_LINES = Math.max(10, Number(PAGE_ARGS.get("max_lines")) || 1000); // log lines kept in the DOM

const $ = (id) => document.getElementById(id);

// -- talking to the server --------------------------------------------------------------------------------------
function cookie(name) {
  const found = document.cookie.split("; ").find((c) => c.startsWith(`${name}=`));
  return found === undefined ? "" : decodeURIComponent(found.slice(name.length + 1));
}

async function answer(response) {
  const body = await response.json().catch(() => null);
  if (response.ok) return body;
  const err = body && body.error ? body.error : { code: `HTTP ${response.status}`, message: response.statusText };
  const hint = response.status === 401 || response.status === 403 ? " (log in again: reload with the token)" : "";
  throw new Error(`${err.code}: ${err.message}${hint}`);
}

/** GET scf/api/<path> with `args` as query arguments (each JSON-encoded, as the REST API reads them). */
async function get(path, args = {}) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(args)) {
    if (value !== undefined && value !== null) query.set(name, JSON.stringify(value));
  }
  const url = `${API}${path}${query.size ? `?${query}` : ""}`;
  return answer(await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } }));
}

/** POST a JSON body; the _xsrf cookie goes back as X-XSRFToken, as Jupyter's own front end sends it. */
async function post(path, body) {
  const headers = { "Content-Type": "application/json", "X-XSRFToken": cookie("_xsrf") };
  return answer(await fetch(`${API}${path}`, { method: "POST", credentials: "same-origin", headers,
                                               body: JSON.stringify(body) }));
}

/** The rows of a frame the REST API sends ({columns, data}) as objects. */
function rows(frame) {
  return frame.data.map((row) => Object.fromEntries(frame.columns.map((c, i) => [c, row[i]])));
}

// -- small DOM helpers: text only ---------------------------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function statusBadge(status) {
  const known = STATUSES.includes(status) ? status : "other";
  return el("span", { class: `status s-${known}` }, status ?? "");
}

const pad = (n, w = 2) => String(n).padStart(w, "0");
function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:` +
         `${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

function say(text, isError = false) {
  const m = $("message");
  m.textContent = text;
  m.className = isError ? "error" : "";
}

// -- filters and paging -------------------------------------------------------------------------------------------
const view = { offset: 0, limit: 50, total: 0 };

function epoch(input) {
  return input.value ? new Date(input.value).getTime() / 1000 : null; // datetime-local: the browser's time zone
}

function filters() {
  const out = {};
  const fn = $("f-function").value.trim();
  if (fn) out.function = fn;
  const statuses = [...document.querySelectorAll("#f-status input:checked")].map((c) => c.value);
  if (statuses.length) out.status = statuses;
  const rid = $("f-request").value.trim();
  if (rid) out.request_id = rid;
  const from = epoch($("f-from"));
  const to = epoch($("f-to"));
  if (from !== null || to !== null) out.start_time = [from, to];
  return out;
}

function buildStatusFilter() {
  for (const s of STATUSES) {
    const box = el("input", { type: "checkbox", value: s, name: "status" });
    box.addEventListener("change", () => apply());
    $("f-status").append(el("label", { class: "check" }, box, ` ${s}`));
  }
}

function apply() {
  view.offset = 0;
  refresh(true);
}

function go(where) {
  const lastPage = Math.max(0, Math.floor((view.total - 1) / view.limit) * view.limit);
  const to = { first: 0, prev: view.offset - view.limit, next: view.offset + view.limit, last: lastPage }[where];
  view.offset = Math.min(Math.max(0, to), lastPage);
  refresh(true);
}

// -- refreshing: from the change stream, throttled; one page and the counts per refresh ----------------------------
let generation = 0; // answers to an older refresh than the newest are dropped
let running = 0; // refreshes in flight
let dirty = false;
let lastStart = -Infinity;
let timer = null;
let refreshFailed = false; // the message shown is a refresh's error (a terminate's stays)

/** Something changed: refresh soon, at most once per REFRESH_MS, never two at a time. */
function changed() {
  dirty = true;
  if (timer !== null || running > 0) return;
  timer = setTimeout(() => {
    timer = null;
    if (dirty) refresh(false);
  }, Math.max(0, lastStart + REFRESH_MS - performance.now()));
}

/** The query of the page shown: newest first; a page in the older half is read from the oldest end (ASC, then
 * reversed), so that DuckDB skips few rows: the last page of a million events costs what the first does. */
function pageQuery() {
  const fromEnd = view.offset > 0 && view.offset + view.limit / 2 > view.total / 2;
  if (!fromEnd || view.offset >= view.total) return { offset: view.offset, limit: view.limit };
  const end = Math.min(view.total, view.offset + view.limit);
  return { order: "ASC", offset: view.total - end, limit: end - view.offset };
}

async function refresh(now) {
  if (running > 0 && !now) {
    dirty = true;
    return;
  }
  dirty = false;
  running += 1;
  lastStart = performance.now();
  const mine = ++generation;
  const f = filters();
  const query = pageQuery();
  try {
    const [overview, page] = await Promise.all([
      get("overview", f.function ? { function: f.function } : {}),
      get("events", { ...f, ...query, total: true }),
    ]);
    if (mine !== generation) return;
    if (query.order === "ASC") page.events.data.reverse();
    view.total = page.total;
    if (view.offset > 0 && view.offset >= page.total) {
      dirty = true; // the page emptied (a filter, a purge): show the last one that has rows
      view.offset = Math.max(0, Math.floor((page.total - 1) / view.limit) * view.limit);
    }
    drawCounts(rows(overview.overview));
    drawTable(rows(page.events));
    if (refreshFailed) say(""); // the server answers again
    refreshFailed = false;
  } catch (e) {
    if (mine === generation) {
      refreshFailed = true;
      say(e.message, true);
    }
  } finally {
    running -= 1;
    if (dirty) changed();
  }
}

function drawCounts(overview) {
  const active = new Set(filters().status ?? []);
  const chips = overview.map((r) => {
    const chip = el("button", { type: "button", class: `count s-${r.status}`, "data-status": r.status,
                                title: `show only ${r.status} events` },
                    el("span", { class: "n" }, Number(r.count).toLocaleString()), ` ${r.status}`);
    if (active.has(r.status)) chip.classList.add("on");
    chip.addEventListener("click", () => {
      for (const box of document.querySelectorAll("#f-status input")) box.checked = box.value === r.status;
      apply();
    });
    return chip;
  });
  $("counts").replaceChildren(...chips);
}

// -- the table ------------------------------------------------------------------------------------------------------
const pending = new Map(); // RequestId -> Terminate sent, its event not ended yet (survives redraws)

function drawTable(events) {
  const body = events.map((ev) => {
    if (!ACTIVE.has(ev.status)) pending.delete(ev.request_id);
    const logButton = el("button", { type: "button", class: "open-log" }, "log");
    logButton.addEventListener("click", () => openLog(ev.request_id));
    const actions = el("td", { class: "actions" }, logButton);
    if (ACTIVE.has(ev.status)) actions.append(terminateButton(ev.request_id));
    const error = ev.error_type ? `${ev.error_type}: ${ev.error_message ?? ""}` : ev.exit_reason ?? "";
    const row = el("tr", { "data-request-id": ev.request_id, "data-status": ev.status },
      el("td", { class: "rid" }, el("code", {}, ev.request_id)), el("td", {}, ev.function_name),
      el("td", {}, ev.qualifier), el("td", {}, statusBadge(ev.status)), el("td", {}, when(ev.start_time)),
      el("td", {}, when(ev.end_time)), el("td", { class: "num" }, ev.duration_ms == null ? "" : ev.duration_ms.toFixed(1)),
      el("td", { class: ev.error_type ? "error failed" : "error", title: error }, error), actions);
    if (ev.request_id === log.rid) row.classList.add("selected");
    return row;
  });
  if (!body.length) body.push(el("tr", {}, el("td", { colspan: "9", class: "empty" }, "no events match")));
  $("events").tBodies[0].replaceChildren(...body);
  const first = view.total ? view.offset + 1 : 0;
  $("range").textContent = `${first.toLocaleString()}-${(view.offset + events.length).toLocaleString()} of ` +
                           `${view.total.toLocaleString()}`;
  $("first").disabled = $("prev").disabled = view.offset === 0;
  $("next").disabled = $("last").disabled = view.offset + view.limit >= view.total;
}

function terminateButton(rid) {
  const button = el("button", { type: "button", class: "terminate" }, pending.has(rid) ? "terminating..." : "Terminate");
  button.disabled = pending.has(rid);
  button.addEventListener("click", () => terminate(rid, button));
  return button;
}

async function terminate(rid, button) {
  if (pending.has(rid)) return; // sent once
  const grace = $("grace").checked;
  pending.set(rid, grace);
  button.disabled = true;
  button.textContent = "terminating...";
  try {
    const done = await post("terminate", { request_id: rid, grace, wait: false });
    say(`${rid}: ${done.status}${ACTIVE.has(done.status) ? (grace ? " (SIGTERM sent)" : " (stopping)") : ""}`);
    if (!ACTIVE.has(done.status)) pending.delete(rid);
  } catch (e) {
    pending.delete(rid); // it failed: the button comes back on the next draw
    button.disabled = false;
    button.textContent = "Terminate";
    say(`${rid}: ${e.message}`, true);
  }
  changed();
}

// -- the live log view ------------------------------------------------------------------------------------------------
const log = { rid: null, source: null, tail: [], last: 0, earlier: null, drawn: 0, timer: null, ended: false };

function closeLog() {
  if (log.source) log.source.close();
  clearTimeout(log.timer);
  Object.assign(log, { rid: null, source: null, tail: [], last: 0, earlier: null, drawn: 0, timer: null, ended: false });
  $("log").hidden = true;
  $("log-lines").replaceChildren();
  for (const tr of document.querySelectorAll("#events tr.selected")) tr.classList.remove("selected");
}

async function openLog(rid) {
  closeLog();
  log.rid = rid;
  $("log").hidden = false;
  $("log-id").textContent = rid;
  for (const tr of document.querySelectorAll("#events tr[data-request-id]")) {
    tr.classList.toggle("selected", tr.dataset.requestId === rid);
  }
  try {
    const { info } = await get(`events/${encodeURIComponent(rid)}`);
    if (log.rid !== rid) return;
    setLogStatus(info.status);
    follow(rid, Math.max(0, info.log_seq - MAX_LINES)); // the newest MAX_LINES lines, then each new one
  } catch (e) {
    $("log-range").textContent = e.message;
  }
}

function follow(rid, since) {
  log.last = since;
  const url = `${API}events/${encodeURIComponent(rid)}/logs?follow=1&since_seq=${since}`;
  const source = new EventSource(url); // reconnects by itself, from the last id (seq) it received
  log.source = source;
  source.addEventListener("ready", (e) => setLogStatus(JSON.parse(e.data).status));
  source.addEventListener("lines", (e) => {
    const lines = rows(JSON.parse(e.data));
    log.tail.push(...lines);
    if (log.tail.length > MAX_LINES) log.tail.splice(0, log.tail.length - MAX_LINES);
    if (lines.length) log.last = lines[lines.length - 1].seq;
    scheduleDraw();
  });
  source.addEventListener("end", (e) => {
    source.close(); // else the browser would reconnect
    log.ended = true;
    setLogStatus(JSON.parse(e.data).status);
    scheduleDraw();
  });
}

function setLogStatus(status) {
  $("log-status").replaceChildren(statusBadge(status));
}

function scheduleDraw() {
  if (log.timer === null) log.timer = setTimeout(drawLog, DRAW_MS);
}

function lineNode(line) {
  return el("div", { class: `line ${line.stream === "stderr" ? "stderr" : "stdout"}` },
            el("span", { class: "seq" }, line.seq), line.line);
}

function drawLog() {
  log.timer = null;
  const box = $("log-lines");
  const atEnd = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
  if (log.earlier === null) {
    const fresh = log.tail.filter((l) => l.seq > log.drawn);
    box.append(...fresh.map(lineNode));
    while (box.childElementCount > MAX_LINES) box.firstElementChild.remove();
    if (fresh.length) log.drawn = fresh[fresh.length - 1].seq;
    if (atEnd) box.scrollTop = box.scrollHeight;
  }
  const shown = log.earlier ?? log.tail;
  const range = shown.length ? `lines ${shown[0].seq}-${shown[shown.length - 1].seq} of ${log.last}` :
                (log.ended ? "no lines" : "no lines yet");
  $("log-range").textContent = range + (log.earlier ? " (earlier lines; live ones keep arriving)" : "");
  $("log-earlier").disabled = !shown.length || shown[0].seq <= 1;
  $("log-latest").hidden = log.earlier === null;
}

let readingEarlier = false; // one "show earlier" at a time: a second click must not read the same window

async function showEarlier() {
  const shown = log.earlier ?? log.tail;
  const first = shown.length ? shown[0].seq : log.last + 1;
  if (first <= 1 || readingEarlier) return;
  const since = Math.max(0, first - 1 - MAX_LINES);
  const rid = log.rid;
  readingEarlier = true;
  $("log-earlier").disabled = true;
  let logs;
  try {
    ({ logs } = await get(`events/${encodeURIComponent(rid)}/logs`, { since_seq: since, limit: first - 1 - since }));
  } finally {
    readingEarlier = false;
    $("log-earlier").disabled = false;
  }
  if (log.rid !== rid) return;
  log.earlier = rows(logs);
  $("log-lines").replaceChildren(...log.earlier.map(lineNode));
  $("log-lines").scrollTop = 0;
  drawLog();
}

function showLatest() {
  log.earlier = null;
  log.drawn = 0;
  $("log-lines").replaceChildren();
  drawLog();
}

// -- start ----------------------------------------------------------------------------------------------------------
function listen() {
  const source = new EventSource(`${API}changes`);
  const live = $("live");
  source.addEventListener("ready", () => {
    live.textContent = "live";
    live.className = "live on";
    changed(); // whatever happened while it was not listening
  });
  source.addEventListener("message", (e) => {
    const c = JSON.parse(e.data);
    if (c.overflow || c.events.length) changed(); // new lines alone change no row
  });
  source.addEventListener("error", () => {
    live.textContent = source.readyState === EventSource.CLOSED ? "offline: reload the page" : "reconnecting";
    live.className = "live off";
  });
}

async function loadFunctions() {
  try {
    const { functions } = await get("functions");
    const names = [...new Set(rows(functions).map((f) => f.name))].sort();
    $("function-names").replaceChildren(...names.map((n) => el("option", { value: n })));
  } catch (e) {
    say(e.message, true);
  }
}

function start() {
  if (PAGE_ARGS.has("token")) { // the login cookie is set now: keep the token out of the address bar
    PAGE_ARGS.delete("token");
    history.replaceState(null, "", `${location.pathname}${PAGE_ARGS.size ? `?${PAGE_ARGS}` : ""}`);
  }
  buildStatusFilter();
  view.limit = Number($("limit").value);
  $("filters").addEventListener("submit", (e) => {
    e.preventDefault();
    apply();
  });
  $("f-function").addEventListener("change", () => apply());
  $("f-function").addEventListener("focus", loadFunctions);
  $("clear").addEventListener("click", () => {
    $("filters").reset();
    apply();
  });
  $("limit").addEventListener("change", () => {
    view.limit = Number($("limit").value);
    apply();
  });
  for (const where of ["first", "prev", "next", "last"]) $(where).addEventListener("click", () => go(where));
  $("log-close").addEventListener("click", closeLog);
  $("log-earlier").addEventListener("click", () => showEarlier().catch((e) => say(e.message, true)));
  $("log-latest").addEventListener("click", showLatest);
  loadFunctions();
  refresh(true);
  listen();
}

start();
