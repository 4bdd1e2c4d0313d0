// Review page logic. Record data is only ever written with textContent, never parsed as HTML.
"use strict";

const REASONS = {
  disagreement: "Specialists disagree",
  low_confidence: "Low confidence",
  timeout: "A specialist timed out",
  specialist_error: "A specialist failed",
  audit: "Audit sample (checks consensus)",
  uncertified: "Audit sample (routing not yet certified)",
  human_mode: "Sent to a person",
  llm_audit: "Check on the LLM (audit sample)",
  llm_invalid_label: "LLM answer invalid (label not in the set)",
  llm_malformed: "LLM answer invalid (malformed)",
  llm_no_answer: "LLM gave no answer",
  llm_missing_answer: "LLM answer missing",
  llm_conflicting_answers: "LLM answer invalid (conflicting answers)",
  llm_bad_request: "LLM refused the request",
};
const POLL_MS = 3000;
const POLL_MAX_MS = 30000;

let token = sessionStorage.getItem("aa-review-token") || "";
let labels = [];
let descriptions = {};
let items = [];
let index = 0;
let busy = false;
let view = "queue";
let undoWindow = 10;
let last = null;           // {id, label, until}: the label the undo key takes back
let pollTimer = null;
let pollDelay = POLL_MS;
let undoTimer = null;

const $ = (id) => document.getElementById(id);
const el = (tag, text, cls) => {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
};
const reasonWords = (code) => REASONS[code] ||
  (code && code.startsWith("llm_") ? "LLM answer invalid" : (code || "").replace(/_/g, " "));

class ApiError extends Error {
  constructor(kind, message, data) { super(message); this.kind = kind; this.data = data || {}; }
}

async function api(path, body) {
  let response;
  try {
    response = await fetch(path, {
      method: body ? "POST" : "GET",
      headers: Object.assign({ "Authorization": "Bearer " + token }, body ? { "Content-Type": "application/json" } : {}),
      body: body ? JSON.stringify(body) : undefined,
    });
  } catch (err) {
    throw new ApiError("offline", "lost connection to the review server");
  }
  const data = await response.json().catch(() => ({}));
  if (response.ok) return data;
  const kind = { 401: "bad_token", 429: "locked", 409: "taken", 403: "not_yours" }[response.status] ||
    (response.status >= 500 ? "offline" : "error");
  throw new ApiError(data.code === "gone" ? "gone" : kind, data.error || ("HTTP " + response.status), data);
}

function alertBox(message, info) {
  const box = $("alert");
  box.textContent = message || "";
  box.className = info ? "info" : "";
  box.hidden = !message;
}

function say(message) { $("status").textContent = message; }

function showLogin(message) {
  stopPolling();
  sessionStorage.removeItem("aa-review-token");
  for (const id of ["review", "empty", "mine", "stats", "tabs", "undo-bar", "keys"]) $(id).hidden = true;
  $("login").hidden = false;
  alertBox(message);
  $("token").focus();
}

function handle(err) {
  if (err.kind === "bad_token") showLogin("That access token is not valid. Check it and try again.");
  else if (err.kind === "locked") {
    const wait = err.data.retry_after_s || 60;
    showLogin(`Too many failed attempts. Wait ${wait} s, then try again with a valid token.`);
  } else if (err.kind === "offline") alertBox(`Lost connection to the review server. Retrying in ${Math.round(pollDelay / 1000)} s…`);
  else alertBox(err.message);
}

function showProgress(data) {
  const p = data.progress;
  if (!p) return;
  const waiting = data.waiting === undefined ? p.open : data.waiting;
  $("progress").textContent = `${waiting} waiting for you · ${p.open} open · ${p.labelled + p.emitted} labelled`;
}

// -- the queue ---------------------------------------------------------------------------------
function merge(fresh) {
  const current = items[index] && items[index].id;
  const byId = new Map(fresh.map((item) => [item.id, item]));
  items = items.filter((item) => byId.has(item.id));
  const known = new Set(items.map((item) => item.id));
  for (const item of fresh) if (!known.has(item.id)) items.push(item);
  const at = items.findIndex((item) => item.id === current);
  index = at >= 0 ? at : Math.min(index, Math.max(items.length - 1, 0));
  return !current || at < 0;
}

async function load() {
  const data = await api("/api/queue?limit=200");
  labels = data.labels; descriptions = data.descriptions || {}; undoWindow = data.undo_window_s;
  const moved = merge(data.items);
  $("login").hidden = true; $("tabs").hidden = false; $("keys").hidden = false;
  $("who").textContent = `signed in as ${data.me.name}${data.me.admin ? " (admin)" : ""}`;
  showProgress(data);
  if (view === "queue" && (moved || $("review").hidden === items.length > 0)) render();
  else if (view === "queue") $("position").textContent = `${index + 1} of ${items.length}`;
}

function stopPolling() { clearTimeout(pollTimer); pollTimer = null; }

function schedule() {
  stopPolling();
  pollTimer = setTimeout(async () => {
    try {
      await load();
      if (pollDelay !== POLL_MS) alertBox("Reconnected.", true);
      pollDelay = POLL_MS;
    } catch (err) {
      if (err.kind === "offline") pollDelay = Math.min(pollDelay * 2, POLL_MAX_MS);
      handle(err);
      if (err.kind === "bad_token" || err.kind === "locked") return;
    }
    schedule();
  }, pollDelay);
}

function bars(container, probs, title, highlight) {
  const box = el("div", null, "model");
  box.appendChild(el("h3", title));
  const top = highlight || Object.keys(probs).reduce((a, b) => (probs[a] >= probs[b] ? a : b), "");
  for (const label of labels.filter((l) => l in probs)) {
    const row = el("div", null, "bar-row" + (label === top ? " top" : ""));
    row.appendChild(el("span", label));
    const bar = el("span", null, "bar");
    const fill = el("span", null, "fill");
    fill.style.width = `${Math.round(probs[label] * 100)}%`;
    bar.appendChild(fill);
    bar.setAttribute("role", "img");
    bar.setAttribute("aria-label", `${label} ${Math.round(probs[label] * 100)} percent`);
    row.appendChild(bar);
    row.appendChild(el("span", probs[label].toFixed(2), "value"));
    box.appendChild(row);
  }
  container.appendChild(box);
}

function render() {
  if (view !== "queue") return;
  const item = items[index];
  $("review").hidden = !item; $("empty").hidden = !!item;
  if (!item) return;
  $("position").textContent = `${index + 1} of ${items.length}`;
  const why = [reasonWords(item.hard_reason || item.reason)];
  if (item.reason && item.reason !== "human_mode" && item.reason !== item.hard_reason) why.push(reasonWords(item.reason));
  if (item.second_opinion) why.push("second opinion (agreement check)");
  $("reason").textContent = why.join(" · ");
  const source = [];
  if (item.source) source.push(`from ${item.source.topic} #${item.source.partition}@${item.source.offset}`);
  if (item.created_ms) source.push(`created ${new Date(item.created_ms).toLocaleString()}`);
  $("source").textContent = source.length ? "· " + source.join(", ") : "";
  $("uncertainty").textContent = Number(item.uncertainty).toFixed(2);
  $("text").textContent = item.text;
  const votes = $("votes");
  votes.replaceChildren();
  if (item.suggested) bars(votes, item.mean, `Suggested: ${item.suggested} (mean of the specialists)`, item.suggested);
  for (const p of item.predictions) {
    const name = p.specialist + (p.model_version ? ` @${p.model_version}` : "");
    if (Object.keys(p.probs).length) bars(votes, p.probs, `${name}: votes ${p.vote}`);
    else votes.appendChild(el("p", `${name}: no prediction`, "help"));
  }
  const buttons = $("buttons");
  buttons.replaceChildren();
  labels.forEach((label, i) => {
    const b = el("button");
    b.type = "button";
    b.appendChild(document.createTextNode(label));
    b.appendChild(el("kbd", i + 1));
    if (label === item.suggested) { b.classList.add("suggested"); b.appendChild(el("span", "suggested", "badge")); }
    b.disabled = busy;
    b.addEventListener("click", () => choose(label));
    buttons.appendChild(b);
  });
  const guide = $("guidelines");
  guide.replaceChildren();
  for (const label of labels) {
    guide.appendChild(el("dt", label));
    guide.appendChild(el("dd", descriptions[label] || "No description given (task.label_descriptions)."));
  }
}

function setBusy(value) {
  busy = value;
  for (const b of document.querySelectorAll("#buttons button, #undo-btn")) b.disabled = value;
}

async function choose(label) {
  const item = items[index];
  if (!item || busy) return;
  setBusy(true);
  try {
    const data = await api("/api/label", { id: item.id, label });
    items = items.filter((i) => i.id !== item.id);
    index = Math.min(index, Math.max(items.length - 1, 0));
    showProgress(data);
    alertBox("");
    if (data.primary) { last = { id: item.id, label, until: data.undo_until }; showUndo(); }
    say(`Labelled “${label}”${data.primary ? "" : " (second opinion)"}.`);
  } catch (err) {
    if (err.kind === "taken") {
      items = items.filter((i) => i.id !== item.id);
      index = Math.min(index, Math.max(items.length - 1, 0));
      alertBox("Someone else already labelled that record; it has left your queue.");
    } else handle(err);
  } finally {
    setBusy(false);
    render();
  }
}

function showUndo() {
  clearInterval(undoTimer);
  const tick = () => {
    const left = last ? Math.ceil(last.until - Date.now() / 1000) : 0;
    if (!last || left <= 0) {
      clearInterval(undoTimer);
      $("undo-bar").hidden = true;
      if (last) say(`“${last.label}” is published. To change it, open My labels (m).`);
      last = null;
      return;
    }
    $("undo-bar").hidden = false;
    $("undo-text").textContent = `Labelled “${last.label}”. Undo possible for ${left} s.`;
  };
  tick();
  undoTimer = setInterval(tick, 250);
}

async function undo() {
  if (!last || busy) return;
  const target = last;
  setBusy(true);
  try {
    await api("/api/undo", { id: target.id });
    last = null; showUndo();
    say(`Undone: the record is back in your queue.`);
    await load();
    const at = items.findIndex((i) => i.id === target.id);
    if (at >= 0) { index = at; render(); }
  } catch (err) {
    if (err.kind === "gone") {
      alertBox("Too late to undo: the label was already published. Open My labels (m) to correct it.");
      last = null; showUndo();
    } else handle(err);
  } finally { setBusy(false); }
}

// -- my labels and corrections -------------------------------------------------------------------
function stateWords(item) {
  if (!item.primary) return `your second opinion (published label: ${item.label || "none yet"} by ${item.by || "-"})`;
  if (item.status === "labelled") return `waiting to be published (revision ${item.revision})`;
  if (item.status === "emitted") return `published, revision ${item.revision}`;
  return item.status;
}

async function showMine() {
  const data = await api("/api/mine");
  const list = $("mine-list");
  list.replaceChildren();
  if (!data.items.length) list.appendChild(el("li", "You have not labelled anything yet."));
  for (const item of data.items) {
    const li = el("li");
    li.appendChild(el("div", item.text));
    const row = el("div", null, "row");
    row.appendChild(el("strong", item.primary ? item.label : item.my_label));
    row.appendChild(el("span", "· " + stateWords(item), "help"));
    if (item.undo_until && item.undo_until > Date.now() / 1000) {
      const button = el("button", "Undo");
      button.type = "button";
      button.addEventListener("click", () => undoMine(item.id));
      row.appendChild(button);
    }
    if (item.primary && item.status !== "open") {
      const select = el("select");
      select.setAttribute("aria-label", `Correct the label of ${item.id}`);
      for (const label of labels) {
        const option = el("option", label);
        option.value = label;
        option.selected = label === item.label;
        select.appendChild(option);
      }
      const button = el("button", "Correct");
      button.type = "button";
      button.dataset.id = item.id;
      button.addEventListener("click", () => correct(item.id, select.value));
      row.appendChild(select);
      row.appendChild(button);
    }
    li.appendChild(row);
    list.appendChild(li);
  }
}

async function undoMine(id) {
  if (busy) return;
  setBusy(true);
  try {
    await api("/api/undo", { id });
    if (last && last.id === id) { last = null; showUndo(); }
    say("Undone: the record is back in the queue.");
    await showMine();
  } catch (err) {
    if (err.kind === "gone") alertBox("Too late to undo: the label was already published. Correct it instead.");
    else handle(err);
    await showMine().catch(() => {});
  } finally { setBusy(false); }
}

async function correct(id, label) {
  if (busy) return;
  setBusy(true);
  try {
    const data = await api("/api/correct", { id, label });
    alertBox("");
    say(`Corrected to “${label}”: revision ${data.revision}, published in ${Math.round(undoWindow)} s.`);
    await showMine();
  } catch (err) { handle(err); } finally { setBusy(false); }
}

async function showStats() {
  const data = await api("/api/stats");
  const body = $("stats-body");
  body.replaceChildren();
  const fmt = (v) => (v === null || v === undefined ? "–" : Number(v).toFixed(2));
  const llm = data.llm;
  body.appendChild(el("p", llm.items
    ? `LLM vs people: ${llm.items} audited labels, agreement ${fmt(llm.agreement)}, Cohen's kappa ${fmt(llm.kappa)}.`
    : "LLM vs people: no audited LLM label answered yet (reviewer.human_audit_rate)."));
  if (!data.pairs.length) {
    body.appendChild(el("p", "Between people: no record labelled by two people yet (reviewer.human.overlap)."));
    return;
  }
  const wrap = el("div", null, "table-wrap");
  const table = el("table");
  const head = el("tr");
  for (const h of ["people", "records", "agreement", "kappa"]) head.appendChild(el("th", h));
  table.appendChild(head);
  for (const p of data.pairs) {
    const row = el("tr");
    for (const v of [`${p.a} & ${p.b}`, p.items, fmt(p.agreement), fmt(p.kappa)]) row.appendChild(el("td", v));
    table.appendChild(row);
  }
  wrap.appendChild(table);
  body.appendChild(wrap);
}

async function show(name) {
  view = name;
  for (const b of document.querySelectorAll("#tabs [data-view]")) {
    if (b.dataset.view === name) b.setAttribute("aria-current", "page"); else b.removeAttribute("aria-current");
  }
  $("mine").hidden = name !== "mine"; $("stats").hidden = name !== "stats";
  if (name !== "queue") { $("review").hidden = true; $("empty").hidden = true; }
  try {
    if (name === "mine") await showMine();
    else if (name === "stats") await showStats();
    else render();
  } catch (err) { handle(err); }
}

async function start() {
  try {
    await load();
    alertBox("");
    render();
    schedule();
  } catch (err) { handle(err); if (err.kind === "offline") schedule(); }
}

document.addEventListener("keydown", (event) => {
  const tag = event.target.tagName;
  if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA" || $("tabs").hidden) return;
  if (event.altKey || event.metaKey || (event.ctrlKey && event.key !== "z")) return;
  const n = Number(event.key);
  if (view === "queue" && n >= 1 && n <= labels.length) choose(labels[n - 1]);
  else if (event.key === "u" || (event.key === "z" && event.ctrlKey)) undo();
  else if (event.key === "s" && view === "queue" && items.length) { index = (index + 1) % items.length; render(); }
  else if (event.key === "r") start();
  else if (event.key === "q") show("queue");
  else if (event.key === "m") show("mine");
  else if (event.key === "a") show("stats");
});

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    token = $("token").value.trim();
    sessionStorage.setItem("aa-review-token", token);
    start();
  });
  $("undo-btn").addEventListener("click", undo);
  $("reload").addEventListener("click", start);
  for (const b of document.querySelectorAll("#tabs [data-view]")) b.addEventListener("click", () => show(b.dataset.view));
  if (token) start();
});
