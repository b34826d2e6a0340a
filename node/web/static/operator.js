// The operator panel: with an operator key loaded, the page activates and
// deactivates layers. The key file is read here and turned into a
// non-extractable WebCrypto key; it is never stored and never sent. Each
// request is signed here exactly as the p2pimg command signs it: the
// activation (as gossiped to the hosts) and the API request (method, URI,
// time, SHA-256 of the body), and the daemon checks both against the
// cluster file's operators. Without a key the panel stays read-only.
"use strict";

const operator = { key: null, id: "", fleet: null };

const enc = new TextEncoder();

function hex(b) { return [...new Uint8Array(b)].map(x => x.toString(16).padStart(2, "0")).join(""); }

function b64(b, pad) {
  let s = btoa(String.fromCharCode(...new Uint8Array(b)));
  return pad ? s : s.replace(/=+$/, "");
}

// base58btc, the alphabet of peer ids.
function base58(bytes) {
  const abc = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
  let n = 0n;
  for (const b of bytes) n = n * 256n + BigInt(b);
  let s = "";
  while (n > 0n) { s = abc[Number(n % 58n)] + s; n /= 58n; }
  for (const b of bytes) { if (b !== 0) break; s = "1" + s; }
  return s;
}

// varint reads a protobuf varint at b[i]: [value, next index].
function varint(b, i) {
  let v = 0, shift = 0;
  for (; i < b.length && shift < 35; shift += 7) {
    const x = b[i++];
    v |= (x & 0x7f) << shift;
    if (!(x & 0x80)) return [v, i];
  }
  throw new Error("not a key file made by 'p2pimg cluster operator-key' (bad encoding)");
}

// parseKey reads a libp2p private key file: protobuf {1: type, 2: data};
// the page signs with Ed25519 keys only (what 'p2pimg cluster
// operator-key' makes): data is the 32-byte seed then the public key.
function parseKey(b) {
  let type = -1, data = null;
  for (let i = 0; i < b.length;) {
    let tag, n;
    [tag, i] = varint(b, i);
    if (tag === 0x08) { [type, i] = varint(b, i); continue; }
    if (tag !== 0x12) throw new Error("not a key file made by 'p2pimg cluster operator-key' (unknown field " + tag + ")");
    [n, i] = varint(b, i);
    if (i + n > b.length) throw new Error("not a key file made by 'p2pimg cluster operator-key' (cut short)");
    data = b.slice(i, i + n);
    i += n;
  }
  if (type !== 1) throw new Error(type < 0 ? "not a key file made by 'p2pimg cluster operator-key'" : "the page signs only with Ed25519 operator keys (this one is of type " + type + "): use the p2pimg command with --key");
  if (!data || (data.length !== 64 && data.length !== 96)) throw new Error("not an Ed25519 private key (" + (data ? data.length : 0) + " bytes of key data)");
  return { seed: data.slice(0, 32), pub: data.slice(32, 64) };
}

// loadKey turns a key file's bytes into a signing key and its peer id,
// checking that the seed and the public key in the file agree.
async function loadKey(bytes) {
  if (!window.crypto || !crypto.subtle) {
    throw new Error("this browser gives the page no WebCrypto here: browsers allow it only on https:// pages and on http://127.0.0.1 or localhost. Open the page through a tunnel (ssh -L 8080:127.0.0.1:PORT HOST, then http://127.0.0.1:8080/) or use the p2pimg command");
  }
  const { seed, pub } = parseKey(bytes);
  const pkcs8 = new Uint8Array([0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20, ...seed]);
  let key, pubKey;
  try {
    key = await crypto.subtle.importKey("pkcs8", pkcs8, { name: "Ed25519" }, false, ["sign"]);
    pubKey = await crypto.subtle.importKey("raw", pub, { name: "Ed25519" }, false, ["verify"]);
  } catch (e) {
    throw new Error("this browser cannot sign with Ed25519 keys (" + e.message + "): use a current Chromium or Firefox, or the p2pimg command");
  }
  const probe = enc.encode("p2pimg web key check");
  const sig = await crypto.subtle.sign("Ed25519", key, probe);
  if (!await crypto.subtle.verify("Ed25519", pubKey, sig, probe)) throw new Error("the key file is damaged: its private and public halves do not match");
  // The peer id: an identity multihash of the public key's protobuf.
  const id = base58(new Uint8Array([0x00, 0x24, 0x08, 0x01, 0x12, 0x20, ...pub]));
  return { key, id };
}

async function sign(s) { return crypto.subtle.sign("Ed25519", operator.key, enc.encode(s)); }

function nowNanos() { return BigInt(Date.now()) * 1000000n; }

// signedRequest sends a request (body "" for none) with the operator
// header: the key's signature of the method, URI, time and body's hash.
async function signedRequest(method, path, body) {
  const uri = new URL(path, location.href).pathname;
  const t = nowNanos().toString();
  const sum = hex(await crypto.subtle.digest("SHA-256", enc.encode(body)));
  const sig = await sign("p2pimg local api request v1\n" + method + "\n" + uri + "\n" + t + "\n" + sum);
  const headers = { "P2pimg-Operator": operator.id + " " + t + " " + b64(sig, false) };
  if (body) headers["Content-Type"] = "application/json";
  return fetch(path, { method, headers, body: body || undefined });
}

// checkOperator asks the daemon whether the key just loaded is one of
// the cluster's operators (a signed GET /v1/operator), and says why not.
async function checkOperator() {
  const resp = await signedRequest("GET", "v1/operator", "");
  if (resp.ok) return;
  let msg = resp.statusText;
  try { msg = (await resp.json()).message || msg; } catch (e) { /* not JSON */ }
  throw new Error(msg);
}

// act publishes an activation (op: activate or deactivate) signed by the
// operator key, as 'p2pimg activate --key' does.
async function act(op) {
  const f = operator.fleet;
  const layer = document.getElementById("op-layer").value;
  let hosts = document.getElementById("op-hosts").value.trim() || "all";
  if (hosts === "self" && f) hosts = f.self; // signed by an operator: this host by its id
  const at = op === "activate" ? document.getElementById("op-at").value.trim() : "";
  if (!layer) throw new Error("choose a layer");
  if (op === "activate" && !at.startsWith("/")) throw new Error("the path must be absolute, e.g. /opt/app");
  const r = await fetch("v1/resolve/" + encodeURIComponent(layer));
  const res = await r.json();
  if (!r.ok) throw new Error(res.message);
  const t = nowNanos().toString();
  const a = { layer, cid: res.cid, at, hosts, op, time: "@T@", signer: operator.id };
  a.sig = b64(await sign("p2pimg activation v1\n" + layer + "\n" + a.cid + "\n" + at + "\n" + hosts + "\n" + op + "\n" + t + "\n" + operator.id + "\n"), true);
  const body = JSON.stringify({ signed: a }).replace('"@T@"', t); // the time is an int64: too large for a JS number
  const resp = await signedRequest("POST", "v1/activate", body);
  const out = await resp.json();
  if (!resp.ok) throw new Error(out.message || resp.statusText);
  return op + " of " + layer + " published to " + out.targets.length + " known host(s)";
}

function opResult(text, ok) {
  const p = document.getElementById("op-result");
  p.textContent = text;
  p.className = ok ? "ok" : "error";
  p.hidden = false;
}

function setKey(k) {
  operator.key = k ? k.key : null;
  operator.id = k ? k.id : "";
  const on = !!k;
  for (const id of ["op-activate", "op-deactivate", "op-forget"]) document.getElementById(id).disabled = !on;
  document.getElementById("op-status").textContent = on
    ? "Operator key " + k.id + " loaded: the page signs with it here; it is not stored and not sent."
    : "Read-only. Load an operator key file (from 'p2pimg cluster operator-key') to activate or deactivate layers; the page reads it and signs each request itself: the key is never sent.";
  document.getElementById("op-key").dataset.key = k ? k.id : "";
}

// operatorDraw keeps the panel's choices in step with the fleet.
function operatorDraw(f) {
  operator.fleet = f;
  const sel = document.getElementById("op-layer");
  const names = f.layers.map(l => l.name);
  if ([...sel.options].map(o => o.value).join() !== names.join()) {
    const keep = sel.value;
    sel.replaceChildren(...names.map(n => el("option", { value: n }, n)));
    if (names.includes(keep)) sel.value = keep;
  }
  const opts = new Set(["all", "self"]);
  for (const h of f.hosts) {
    opts.add(h.id);
    for (const [k, v] of Object.entries(h.labels || {})) opts.add(k + "=" + v);
  }
  const list = document.getElementById("op-hosts-list");
  if (list.options.length !== opts.size) list.replaceChildren(...[...opts].map(o => el("option", { value: o })));
}

function operatorInit() {
  setKey(null);
  const file = document.getElementById("op-key");
  file.addEventListener("change", async () => {
    const fl = file.files[0];
    file.value = "";
    if (!fl) return;
    try {
      if (fl.size > 4096) throw new Error("not a key file (" + fl.size + " bytes)");
      const k = await loadKey(new Uint8Array(await fl.arrayBuffer()));
      operator.key = k.key; operator.id = k.id; // to sign the check only
      await checkOperator();
      setKey(k);
      document.getElementById("op-result").hidden = true;
    } catch (e) {
      setKey(null);
      opResult(fl.name + ": " + e.message, false);
    }
  });
  document.getElementById("op-forget").addEventListener("click", () => { setKey(null); opResult("key forgotten: the page is read-only", true); });
  for (const op of ["activate", "deactivate"]) {
    document.getElementById("op-" + op).addEventListener("click", async ev => {
      ev.preventDefault();
      if (!operator.key) return;
      try { opResult(await act(op), true); } catch (e) { opResult(op + " refused: " + e.message, false); }
    });
  }
}
