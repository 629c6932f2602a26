// The kvstore dashboard: polls this node's /api/cluster once a second and redraws.
// No framework, no build step, nothing fetched from elsewhere.
"use strict";

const POLL_MS = 1000;
const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948",
  "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac", "#17becf", "#bcbd22"];
const colours = new Map();

function colour(name) {
  if (!colours.has(name)) colours.set(name, PALETTE[colours.size % PALETTE.length]);
  return colours.get(name);
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function arc(r0, r1, a0, a1) {
  const p = (r, a) => `${(r * Math.sin(a)).toFixed(3)} ${(-r * Math.cos(a)).toFixed(3)}`;
  const large = a1 - a0 > Math.PI ? 1 : 0;
  return `M ${p(r1, a0)} A ${r1} ${r1} 0 ${large} 1 ${p(r1, a1)} L ${p(r0, a1)} A ${r0} ${r0} 0 ${large} 0 ${p(r0, a0)} Z`;
}

function drawRing(ring, members) {
  const svg = document.getElementById("ring");
  const NS = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  document.getElementById("ring-version").textContent = ring ? `v${ring.version}, ${ring.partitions} partitions` : "(none yet)";
  if (!ring) return;
  const dead = new Set(members.filter(m => m.state === "dead" || m.state === "left").map(m => m.name));
  const q = ring.partitions;
  const rings = [[70, 100, ring.owners]];
  if (ring.next) rings.push([50, 66, ring.next.owners]);  // the pending change's ownership
  for (const [r0, r1, owners] of rings) {
    owners.forEach((owner, i) => {
      const a0 = (2 * Math.PI * i) / q, a1 = (2 * Math.PI * (i + 1)) / q;
      const path = document.createElementNS(NS, "path");
      path.setAttribute("d", arc(r0, r1, a0, a1));
      path.setAttribute("fill", colour(owner));
      path.setAttribute("opacity", dead.has(owner) ? "0.3" : "1");
      path.setAttribute("stroke", "#0f1419");
      path.setAttribute("stroke-width", q > 128 ? "0.1" : "0.4");
      const t = document.createElementNS(NS, "title");
      t.textContent = `partition ${i}: ${owner}`;
      path.append(t);
      svg.append(path);
    });
  }
  const label = document.createElementNS(NS, "text");
  label.setAttribute("text-anchor", "middle");
  label.setAttribute("dy", "0.35em");
  label.setAttribute("fill", "#8a96a3");
  label.setAttribute("font-size", "12");
  label.textContent = ring.next ? `→ v${ring.next.version}` : `v${ring.version}`;
  svg.append(label);
  const legend = document.getElementById("legend");
  legend.replaceChildren(...[...new Set(ring.owners)].sort().map(n =>
    el("li", {}, el("i", { style: `background:${colour(n)}` }), n)));
}

function fmt(x, unit) { return x === null || x === undefined ? "–" : `${x}${unit || ""}`; }

function transfersCell(t) {
  if (!t || !t.pending) return "–";
  if (t.needed < 0) return "planning…";
  const td = el("span", {}, el("progress", { max: String(Math.max(t.needed, 1)), value: String(t.done) }),
    ` ${t.done}/${t.needed} (${t.keys_moved} keys)`);
  return td;
}

function drawMembers(members) {
  const body = document.querySelector("#members tbody");
  body.replaceChildren(...members.map(m => {
    const rep = m.report || {};
    const hints = Object.entries(rep.hints_pending || {}).map(([t, n]) => `${t}: ${n}`).join(", ") || "0";
    const state = el("td", {}, el("span", { class: `badge state-${m.state}` }, m.state));
    if (!m.reachable) state.append(el("span", { class: "unreachable" }, "unreachable"));
    const damping = m.damped ? `damped (${m.penalty})` : (m.penalty ? `penalty ${m.penalty}` : "–");
    const parts = m.next_partitions === null || m.next_partitions === undefined ? m.partitions : `${m.partitions} → ${m.next_partitions}`;
    return el("tr", { "data-member": m.name, "data-state": m.state, "data-reachable": String(m.reachable) },
      el("td", {}, el("i", { style: `display:inline-block;width:9px;height:9px;margin-right:6px;background:${colour(m.name)}` }), m.name),
      el("td", {}, m.addr), state, el("td", { class: "num" }, fmt(m.incarnation)), el("td", {}, damping),
      el("td", { class: "num" }, parts), el("td", { class: "num" }, fmt(rep.keys)),
      el("td", { class: "num" }, fmt(rep.ops_s)), el("td", { class: "num" }, fmt(rep.p99_ms, " ms")),
      el("td", {}, hints), el("td", {}, transfersCell(rep.transfers)));
  }));
}

function drawEvents(events) {
  const ol = document.getElementById("events");
  ol.replaceChildren(...events.slice().reverse().map(e =>
    el("li", { "data-kind": e.kind }, `${new Date(e.ts * 1000).toLocaleTimeString()} `, el("span", {}, e.text))));
}

async function poll() {
  const status = document.getElementById("status");
  try {
    const r = await fetch("api/cluster", { cache: "no-store" });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const doc = await r.json();
    document.getElementById("seen-from").textContent = `as seen from ${doc.node}`;
    doc.members.map(m => m.name).sort().forEach(colour);  // the same colour for a node on every node's page
    drawRing(doc.ring, doc.members);
    drawMembers(doc.members);
    drawEvents(doc.events);
    status.textContent = `updated ${new Date(doc.ts * 1000).toLocaleTimeString()}`;
    status.className = "status";
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  } catch (e) {
    status.textContent = `cannot reach this node: ${e.message}`;
    status.className = "status error";
  }
  setTimeout(poll, POLL_MS);
}

poll();
