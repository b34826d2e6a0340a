// The fleet view: follows /v1/fleet/events (server-sent events) and draws
// the document each event carries. Everything a host says of itself
// (names, labels, details) goes into the page as text, never as markup.
"use strict";

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const k of kids.flat()) {
    if (k === undefined || k === null || k === "") continue;
    e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return e;
}

function bytes(n) {
  if (!n) return "0 B";
  const u = ["B", "kB", "MB", "GB", "TB", "PB"];
  let i = 0;
  while (n >= 1000 && i < u.length - 1) { n /= 1000; i++; }
  return (i === 0 ? n : n.toFixed(n < 10 ? 1 : 0)) + " " + u[i];
}

function ago(t, now) {
  if (!t) return "never";
  const s = Math.max(0, Math.round((now - Date.parse(t)) / 1000));
  if (s < 2) return "now";
  if (s < 90) return s + "s ago";
  if (s < 5400) return Math.round(s / 60) + "m ago";
  return Math.round(s / 3600) + "h ago";
}

function until(t, now) {
  if (!t) return "";
  const s = Math.round((Date.parse(t) - now) / 1000);
  return s >= 0 ? "in " + s + "s" : "ended " + (-s) + "s ago";
}

function shortID(id) { return id.length > 12 ? "…" + id.slice(-8) : id; }

function fill(table, rows, cols, empty) {
  const body = table.tBodies[0];
  body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { class: "empty", colSpan: cols }, empty))]));
}

function labels(ls) {
  return Object.keys(ls || {}).sort().map(k => el("span", { class: "label" }, k + "=" + ls[k]));
}

function summaryText(l) {
  const order = ["active", "fetching", "requested", "waiting-for-seat", "deactivating", "failed", "inactive"];
  const s = l.summary || {};
  const parts = [];
  if (l.hosts && (s.active || (s.inactive || 0) < l.hosts)) parts.push("active " + (s.active || 0) + "/" + l.hosts);
  for (const k of order) if (k !== "active" && s[k]) parts.push(k + " " + s[k]);
  if (l.unreachable) parts.push(l.unreachable + " unreachable");
  return parts.join(", ") || "not activated";
}

function cell(c) {
  if (!c) return el("td", { class: "cell", "data-state": "none" });
  const kids = [];
  if (c.state) kids.push(el("div", { class: "st st-" + c.state }, c.state));
  else kids.push(el("div", { class: "small" }, "not activated"));
  if (c.state === "fetching" && c.total) {
    const pct = Math.min(100, Math.floor(100 * c.done / c.total));
    const bar = el("div", { class: "bar" }, el("i"));
    bar.firstChild.style.width = pct + "%";
    kids.push(bar, el("div", { class: "small progress" }, pct + "% of " + bytes(c.total) + (c.rate ? " · " + bytes(c.rate) + "/s" : "") + (c.peers ? " · " + c.peers + " peer(s)" : "")));
  }
  if (c.conflict) kids.push(el("div", { class: "conflict", title: c.conflict }, "policy conflict: not synced"));
  if (c.mode || c.at) kids.push(el("div", { class: "small" }, [c.mode, c.at].filter(Boolean).join(" at ")));
  if (c.holds) kids.push(el("span", { class: "small", title: "holds it " + c.holds }, c.holds === "complete" ? "● held" : "◐ partly held"));
  return el("td", { class: "cell" + (c.stale ? " stale" : ""), title: c.detail || "", "data-state": c.state || "none" }, kids);
}

function drawMatrix(f, now) {
  const t = document.getElementById("matrix");
  const head = el("tr", {}, el("th", {}, "Layer"), el("th", {}, "Hosts"),
    f.hosts.map(h => el("th", { class: "host " + h.reach, "data-host": h.id },
      el("div", {}, h.name || shortID(h.id)),
      el("div", {}, el("span", { class: "badge " + h.reach }, h.reach === "self" ? "this host" : h.reach),
        h.reach === "self" || h.reach === "up" ? "" : el("span", { class: "small" }, " seen " + ago(h.last_seen, now))),
      el("div", {}, labels(h.labels)))));
  t.tHead.replaceChildren(head);
  const rows = f.layers.map(l => {
    const byHost = Object.fromEntries(l.cells.map(c => [c.host, c]));
    return el("tr", { "data-layer": l.name },
      el("th", {}, l.name, el("div", { class: "small" }, [bytes(l.size), l.product ? "licensed: " + l.product : ""].filter(Boolean).join(" · "))),
      el("td", { class: "summary" }, summaryText(l)),
      f.hosts.map(h => {
        const td = cell(byHost[h.id]);
        td.setAttribute("data-host", h.id);
        td.setAttribute("data-layer", l.name);
        return td;
      }));
  });
  fill(t, rows, f.hosts.length + 2, "no layers in the cluster yet: add one with `p2pimg add NAME PATH`");
}

function drawSummary(f) {
  const count = r => f.hosts.filter(h => h.reach === r).length;
  const states = {};
  for (const l of f.layers) for (const [k, v] of Object.entries(l.summary || {})) states[k] = (states[k] || 0) + v;
  const card = (n, what, id) => el("div", { class: "card", id }, el("b", {}, n), el("span", {}, what));
  document.getElementById("summary").replaceChildren(
    card(count("self") + count("up"), "hosts up", "card-up"),
    card(count("unreachable"), "unreachable", "card-unreachable"),
    card(count("gone"), "gone", "card-gone"),
    card(f.layers.length, "layers", "card-layers"),
    card(states.active || 0, "active", "card-active"),
    card(states.fetching || 0, "fetching", "card-fetching"),
    card(states.failed || 0, "failed", "card-failed"));
}

function draw(f) {
  const now = Date.parse(f.time) || Date.now();
  const names = Object.fromEntries(f.hosts.map(h => [h.id, h.name || shortID(h.id)]));
  const name = id => names[id] || shortID(id);
  document.getElementById("cluster").textContent = f.cluster;
  document.getElementById("self").textContent = name(f.self);
  document.getElementById("updated").textContent = new Date(now).toLocaleTimeString();
  document.getElementById("error").hidden = true;
  drawSummary(f);
  drawMatrix(f, now);
  operatorDraw(f);
  fill(document.getElementById("transfers"), f.transfers.map(x => el("tr", {},
    el("td", {}, name(x.host)), el("td", {}, x.layer),
    el("td", {}, bytes(x.done) + " of " + bytes(x.total)),
    el("td", { class: "num" }, bytes(x.rate) + "/s"), el("td", { class: "num" }, x.peers))), 5, "no fetch under way");
  const se = document.getElementById("seats-error");
  se.hidden = !f.seats_error;
  se.textContent = f.seats_error ? "seat table unavailable: " + f.seats_error : "";
  fill(document.getElementById("licenses"), f.seats.licenses.map(l => el("tr", {},
    el("td", {}, l.product), el("td", { class: "num" }, l.seats), el("td", { class: "num" }, l.used),
    el("td", { class: "num" }, l.free), el("td", {}, l.expires ? l.expires.slice(0, 10) : "never"))), 5, "no licence installed");
  fill(document.getElementById("holders"), f.seats.holders.map(g => el("tr", {},
    el("td", {}, g.product), el("td", { class: "num" }, g.seat), el("td", {}, name(g.host)),
    el("td", {}, (g.consumers || []).join(", ")), el("td", {}, until(g.valid_until, now)))), 5, "no seat held");
  fill(document.getElementById("hosts"), f.hosts.map(h => el("tr", { "data-host": h.id },
    el("td", {}, h.name || shortID(h.id), el("div", { class: "small" }, shortID(h.id))),
    el("td", {}, labels(h.labels)),
    el("td", {}, el("span", { class: "badge " + h.reach }, h.reach === "self" ? "this host" : h.reach), " ", el("span", { class: "small" }, ago(h.last_seen, now))),
    el("td", { class: "num" }, h.held_layers), el("td", { class: "num" }, bytes(h.held_bytes)),
    storeCell(h.store, now),
    el("td", {}, h.store && h.store.disk_total ? bytes(h.store.disk_free) + " of " + bytes(h.store.disk_total) : ""))), 7, "no hosts");
  fill(document.getElementById("peers"), f.peers.map(p => el("tr", {},
    el("td", {}, p.name || shortID(p.peer_id)), el("td", { class: "num" }, p.latency_ms.toFixed(1) + " ms"),
    el("td", { class: "num" }, bytes(p.bytes_in) + (p.rate_in ? " · " + bytes(p.rate_in) + "/s" : "")),
    el("td", { class: "num" }, bytes(p.bytes_out) + (p.rate_out ? " · " + bytes(p.rate_out) + "/s" : "")))), 4, "no peer connected");
}

// storeCell shows a host's store figures: counted now for this host, as
// last announced for the others (announced again when one moves by more
// than 1% or 64 MiB, so "as of" may be minutes old while nothing moves).
function storeCell(st, now) {
  if (!st) return el("td", { class: "store" }, el("span", { class: "small" }, "not announced yet"));
  const extra = [st.chunks + " chunks", "dead " + bytes(st.dead_bytes)];
  if (st.view_bytes) extra.push("views " + bytes(st.view_bytes));
  if (st.delta_bytes || st.upper_bytes) extra.push("writes " + bytes(st.delta_bytes + st.upper_bytes));
  extra.push("as of " + ago(st.at, now));
  return el("td", { class: "store" }, bytes(st.stored_bytes) + " stored, dedup " + st.dedup_ratio.toFixed(2) + "x",
    el("div", { class: "small" }, extra.join(" · ")));
}

function setConn(state, text) {
  const c = document.getElementById("conn");
  c.className = "conn " + state;
  c.textContent = text;
}

function showError(msg) {
  const e = document.getElementById("error");
  e.textContent = msg;
  e.hidden = false;
}

function follow() {
  if (!window.EventSource) return poll();
  const es = new EventSource("v1/fleet/events");
  es.addEventListener("fleet", ev => { setConn("live", "live"); draw(JSON.parse(ev.data)); });
  es.addEventListener("error", ev => {
    if (ev.data) { setConn("wait", "daemon not ready"); showError(JSON.parse(ev.data).message); return; }
    setConn("down", "disconnected: retrying…");
  });
}

async function poll() {
  for (;;) {
    try {
      const r = await fetch("v1/fleet");
      const body = await r.json();
      if (r.ok) { setConn("live", "live (polling)"); draw(body); } else { setConn("wait", "daemon not ready"); showError(body.message); }
    } catch (e) {
      setConn("down", "disconnected: retrying…");
    }
    await new Promise(res => setTimeout(res, 2000));
  }
}

operatorInit();
follow();
