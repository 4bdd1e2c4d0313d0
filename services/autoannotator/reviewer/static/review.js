// Review page logic. Record data is only ever written with textContent, never parsed as HTML.
"use strict";
let token = sessionStorage.getItem("aa-review-token") || "";
let labels = [];
let items = [];
let index = 0;
const history = [];  // ids labelled in this session, for undo

const $ = (id) => document.getElementById(id);

async function api(path, body) {
  const response = await fetch(path, {
    method: body ? "POST" : "GET",
    headers: Object.assign({ "Authorization": "Bearer " + token }, body ? { "Content-Type": "application/json" } : {}),
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await response.json().catch(() => ({}));
  if (response.status === 401) { sessionStorage.removeItem("aa-review-token"); $("login").hidden = false; }
  if (!response.ok) throw new Error(data.error || ("HTTP " + response.status));
  return data;
}

function showProgress(p) {
  $("progress").textContent = p ? `${p.open} open · ${p.labelled + p.emitted} labelled` : "";
}

async function load() {
  const data = await api("/api/queue?limit=100");
  labels = data.labels; items = data.items; index = 0;
  $("login").hidden = true;
  showProgress(data.progress);
  render();
}

function render() {
  const item = items[index];
  $("review").hidden = !item; $("empty").hidden = !!item;
  if (!item) return;
  $("position").textContent = `${index + 1} of ${items.length}`;
  $("reason").textContent = item.reason;
  $("uncertainty").textContent = String(item.uncertainty);
  $("text").textContent = item.text;
  const body = $("votes").querySelector("tbody");
  body.replaceChildren();
  for (const p of item.predictions) {
    const row = document.createElement("tr");
    const probs = Object.entries(p.probs).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(", ");
    for (const value of [p.specialist + (p.model_version ? " @" + p.model_version : ""), p.vote || "-", probs]) {
      const cell = document.createElement("td"); cell.textContent = value; row.appendChild(cell);
    }
    body.appendChild(row);
  }
  const buttons = $("buttons");
  buttons.replaceChildren();
  labels.forEach((label, i) => {
    const b = document.createElement("button");
    b.textContent = `${i + 1} ${label}`;
    b.addEventListener("click", () => choose(label));
    buttons.appendChild(b);
  });
}

async function choose(label) {
  const item = items[index];
  if (!item) return;
  try {
    const data = await api("/api/label", { id: item.id, label });
    history.push(item.id); items.splice(index, 1); showProgress(data.progress);
    $("status").textContent = `labelled ${label} (u to undo)`;
    if (!items.length) await load(); else render();
  } catch (err) { $("status").textContent = err.message; }
}

async function undo() {
  const id = history.pop();
  if (!id) return;
  try { await api("/api/undo", { id }); $("status").textContent = "undone"; await load(); }
  catch (err) { $("status").textContent = err.message; }
}

document.addEventListener("keydown", (event) => {
  if (event.target.tagName === "INPUT") return;
  const n = Number(event.key);
  if (n >= 1 && n <= labels.length) choose(labels[n - 1]);
  else if (event.key === "u" || (event.key === "z" && event.ctrlKey)) undo();
  else if (event.key === "s" && items.length) { index = (index + 1) % items.length; render(); }
});

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    token = $("token").value; sessionStorage.setItem("aa-review-token", token);
    load().catch((err) => { $("status").textContent = err.message; });
  });
  if (token) load().catch(() => { $("login").hidden = false; });
});
