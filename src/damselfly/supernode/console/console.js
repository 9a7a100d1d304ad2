"use strict";
// Polls /api/v1/console every second and redraws; no external scripts (the console must work
// on machines without internet). Every value is inserted as text, never as HTML.
const $ = (id) => document.getElementById(id);

function bytes(n) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  n = Number(n) || 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + u[i];
}
function pct(x) { return (100 * (Number(x) || 0)).toFixed(0) + "%"; }
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function bar(frac, done) {
  const b = el("div", undefined, "bar" + (done ? " done" : ""));
  const s = el("span");
  s.style.width = Math.max(0, Math.min(100, 100 * frac)).toFixed(1) + "%";
  b.appendChild(s);
  b.appendChild(el("em", pct(frac)));
  return b;
}
function fill(table, rows, cols, empty) {
  const body = table.tBodies[0];
  const fresh = document.createElement("tbody");
  if (!rows.length) {
    const tr = el("tr");
    const td = el("td", empty, "empty");
    td.colSpan = cols;
    tr.appendChild(td);
    fresh.appendChild(tr);
  }
  for (const cells of rows) {
    const tr = el("tr");
    for (const c of cells) tr.appendChild(c);
    fresh.appendChild(tr);
  }
  table.replaceChild(fresh, body);
}
function td(v, cls) { return el("td", v, cls); }
function tdNode(node, cls) { const t = el("td", undefined, cls); t.appendChild(node); return t; }

function render(d) {
  const by = d.bytes_by_source || {};
  $("delivered").textContent = bytes(d.bytes_delivered);
  $("origin").textContent = bytes(d.origin_bytes + (by.origin || 0));
  $("saved").textContent = bytes(d.origin_bytes_saved);
  $("split").textContent = bytes(by.peer || 0) + " / " + bytes(by.supernode || 0) + " / " + bytes(by.origin || 0);
  $("peers-total").textContent = d.peers_total;
  $("isolated").textContent = d.isolated_peers;
  $("isolated-card").className = "card" + (d.isolated_peers ? " alert" : "");
  $("tasks-count").textContent = "(" + d.tasks_total + ")";
  $("peers-count").textContent = "(" + d.peers_total + ")";
  fill($("tasks"), d.tasks.map((t) => [
    tdNode(el("code", t.task_id.slice(0, 12))),
    td(t.url, "url"),
    td(bytes(t.length), "num"),
    tdNode(bar(t.cdn_progress, t.cdn_complete)),
    tdNode(bar(t.progress, t.peer_count && t.peers_done === t.peer_count)),
    td(t.peers_done + " / " + t.peer_count, "num"),
    tdNode(el("span", t.state + (t.cache_hit ? " · cache hit" : ""), "tag" + (t.state === "failed" ? " bad" : t.cdn_complete ? " ok" : ""))),
  ]), 7, "no task yet");
  fill($("peers"), d.peers.map((p) => [
    tdNode(el("code", p.id)),
    td(p.ip + (p.hostname ? " (" + p.hostname + ")" : "")),
    td(p.tasks, "num"),
    td(p.uploads, "num"),
    td(bytes(p.bytes_served), "num"),
    tdNode(bar(p.share, false)),
    td(p.failures, "num"),
    tdNode(el("span", p.isolated ? "isolated" : "ok", "tag " + (p.isolated ? "bad" : "ok"))),
  ]), 8, "no peer yet");
  fill($("preheats"), d.preheats.map((j) => [
    tdNode(el("code", j.id)), td(j.type), td(j.url, "url"),
    tdNode(el("span", j.status, "tag" + (j.status === "SUCCESS" ? " ok" : j.status === "FAILED" ? " bad" : ""))),
    td(j.message),
  ]), 5, "none");
}

let updates = 0;
async function tick() {
  try {
    const r = await fetch("/api/v1/console", { cache: "no-store" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
    updates++;
    const s = $("status");
    s.className = "status live";
    s.textContent = "live · updated " + new Date().toLocaleTimeString();
    s.dataset.updates = String(updates);
  } catch (e) {
    const s = $("status");
    s.className = "status down";
    s.textContent = "cannot reach the supernode (" + e.message + "); retrying";
  } finally {
    setTimeout(tick, 1000);
  }
}
tick();
