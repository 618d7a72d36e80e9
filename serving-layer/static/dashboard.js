// The advertiser dashboard: plain browser JavaScript over the JSON API (/openapi.json),
// no build step. The key stays in sessionStorage of this tab only.
"use strict";

const $ = (id) => document.getElementById(id);
const LIVE_REFRESH_MS = 10_000; // the speed layer's window: numbers move at most this often
let session = null; // { key, advertiser }
let liveTimer = null;

async function api(path) {
  const resp = await fetch(path, { headers: { Authorization: `Bearer ${session.key}` } });
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const e = body.error || {};
    throw new Error(`${resp.status}: ${e.message || resp.statusText}${e.parameter ? ` (${e.parameter})` : ""}`);
  }
  return body;
}

const money = (micros) => (micros / 1e6).toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 });
const num = (n) => (n ?? 0).toLocaleString();
const pct = (r) => (r == null ? "–" : `${(r * 100).toFixed(2)}%`);
const ratio = (r) => (r == null ? "–" : r.toFixed(2));
const isoDay = (d) => d.toISOString().slice(0, 10);
const isNum = (v) => typeof v === "number";

// What the table shows of a revised day's previous totals (r.previous, group_by=day):
// one formatted value per column (null: nothing to compare), from the same measures
// as the row's own cells.
function previousCells(p) {
  const has = (...names) => names.every((n) => isNum(p[n]));
  return [
    null, null,
    has("exposures") ? num(p.exposures) : null,
    has("clicks") ? num(p.clicks) : null,
    has("cost_micros") ? money(p.cost_micros) : null,
    has("uv") ? num(p.uv) : null,
    null, null,
    has("orders_direct", "orders_indirect") ? `${num(p.orders_direct)} / ${num(p.orders_indirect)}` : null,
    has("gmv_micros_direct", "gmv_micros_indirect") ? money(p.gmv_micros_direct + p.gmv_micros_indirect) : null,
    null,
  ];
}

const COLUMN_NAMES = [null, null, "exposures", "clicks", "cost", "UV", null, null, "orders (direct / indirect)", "GMV", null];

function badgeTitle(r) {
  if (r.provisional) return `speed layer, as of ${r.as_of ?? "–"}`;
  let t = `batch run finished ${r.computed_at}`;
  if (r.revised_at) {
    t += `; revised ${r.revised_at}${r.revisions > 1 ? ` (${r.revisions} revisions)` : ""}`;
    if (r.previous) {
      const prev = previousCells(r.previous)
        .map((v, i) => (v == null ? null : `${COLUMN_NAMES[i]} ${v}`))
        .filter((x) => x != null);
      if (prev.length) t += `; before the revision: ${prev.join(", ")}`;
    }
  }
  return t;
}

async function login(event) {
  event.preventDefault();
  $("login-error").textContent = "";
  session = { key: $("key").value.trim(), advertiser: null };
  try {
    const me = await api("/v1/me");
    if (me.role === "advertiser") {
      session.advertiser = me.advertiser_id;
    } else {
      const wanted = $("advertiser").value;
      if (!wanted) {
        $("advertiser-row").hidden = false;
        $("login-error").textContent = "This is an internal key: enter the advertiser to show.";
        return;
      }
      session.advertiser = Number(wanted);
    }
    sessionStorage.setItem("admetrics.session", JSON.stringify(session));
    start(me.role);
  } catch (e) {
    session = null;
    $("login-error").textContent = `Log in failed: ${e.message}`;
  }
}

function start(role) {
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  $("who").textContent = `advertiser ${session.advertiser}${role === "internal" ? " (internal key)" : ""}`;
  if (!$("from").value) {
    const today = new Date();
    $("to").value = isoDay(today);
    $("from").value = isoDay(new Date(today.getTime() - 13 * 86_400_000));
  }
  showRange();
  refreshLive();
  clearInterval(liveTimer);
  liveTimer = setInterval(refreshLive, LIVE_REFRESH_MS);
}

function logout() {
  sessionStorage.removeItem("admetrics.session");
  clearInterval(liveTimer);
  location.reload();
}

async function showRange(event) {
  if (event) event.preventDefault();
  $("range-error").textContent = "";
  const q = new URLSearchParams({ from: $("from").value, to: $("to").value });
  try {
    const answer = await api(`/v1/advertisers/${session.advertiser}/metrics?${q}`);
    $("final-through").textContent = answer.final_through
      ? `Final through ${answer.final_through} (${answer.time_zone})`
      : `No final day yet (${answer.time_zone})`;
    renderTable(answer);
    renderChart(answer.rows);
  } catch (e) {
    $("range-error").textContent = e.message;
  }
}

function renderTable(answer) {
  const body = $("days").querySelector("tbody");
  body.replaceChildren();
  for (const r of answer.rows) {
    const m = r.metrics;
    const tr = document.createElement("tr");
    const revised = !r.provisional && r.finality === "revised";
    // A revised day is still final: it keeps the "final" class and adds "revised".
    tr.className = r.provisional ? "provisional" : revised ? "final revised" : "final";
    tr.dataset.day = r.day;
    tr.dataset.status = r.status;
    if (revised) tr.dataset.revisedAt = r.revised_at ?? "";
    const label = r.provisional
      ? `provisional${r.awaiting_batch ? " — awaiting batch" : ""}`
      : r.status;
    const cells = [
      r.day, null, num(m.exposures), num(m.clicks), money(m.cost_micros), num(m.uv),
      pct(r.derived.ctr), r.derived.cpc_micros == null ? "–" : money(r.derived.cpc_micros),
      `${num(m.orders_direct)} / ${num(m.orders_indirect)}`,
      money(m.gmv_micros_direct + m.gmv_micros_indirect), ratio(r.derived.roas),
    ];
    const was = revised && r.previous ? previousCells(r.previous) : [];
    cells.forEach((c, i) => {
      const td = document.createElement("td");
      if (i === 1) {
        const b = document.createElement("span");
        b.className = `badge ${r.provisional ? "provisional" : r.status}`;
        b.textContent = label;
        b.title = badgeTitle(r);
        td.append(b);
      } else {
        td.textContent = c;
        // A revised day shows what a changed number was before the revision.
        if (was[i] != null && was[i] !== c) {
          const w = document.createElement("span");
          w.className = "was";
          w.textContent = `was ${was[i]}`;
          w.title = `before the revision of ${r.revised_at ?? "–"}`;
          td.append(w);
        }
      }
      tr.append(td);
    });
    body.append(tr);
  }
  const t = answer.totals;
  const foot = $("days").querySelector("tfoot");
  foot.innerHTML = "";
  const tr = document.createElement("tr");
  [
    "Total", t.provisional ? "includes provisional days" : "final",
    num(t.metrics.exposures), num(t.metrics.clicks), money(t.metrics.cost_micros), "",
    pct(t.derived.ctr), t.derived.cpc_micros == null ? "–" : money(t.derived.cpc_micros),
    `${num(t.metrics.orders_direct)} / ${num(t.metrics.orders_indirect)}`,
    money(t.metrics.gmv_micros_direct + t.metrics.gmv_micros_indirect), ratio(t.derived.roas),
  ].forEach((c) => {
    const th = document.createElement("th");
    th.textContent = c;
    tr.append(th);
  });
  foot.append(tr);
}

const SVG = "http://www.w3.org/2000/svg";
function el(name, attrs, text) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text != null) e.textContent = text;
  return e;
}

function renderChart(rows) {
  const svg = $("chart");
  svg.replaceChildren();
  const defs = el("defs", {});
  const pattern = el("pattern", { id: "hatch", width: 6, height: 6, patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)" });
  pattern.append(el("rect", { width: 6, height: 6, fill: "#ffe8b3" }), el("rect", { width: 3, height: 6, fill: "#f0a500" }));
  defs.append(pattern);
  svg.append(defs);
  const width = svg.clientWidth || 900;
  const height = 220, top = 16, bottom = 36, left = 40;
  const max = Math.max(1, ...rows.map((r) => r.metrics.clicks));
  const step = (width - left) / Math.max(1, rows.length);
  const barW = Math.max(4, step * 0.7);
  svg.append(el("text", { x: 0, y: top }, num(max)));
  rows.forEach((r, i) => {
    const h = ((height - top - bottom) * r.metrics.clicks) / max;
    const x = left + i * step + (step - barW) / 2;
    const revised = !r.provisional && r.finality === "revised";
    const bar = el("rect", {
      x, y: height - bottom - h, width: barW, height: Math.max(h, 1),
      fill: r.provisional ? "url(#hatch)" : "#2f6fdb",
      stroke: r.provisional ? "#f0a500" : revised ? "#1f4f99" : "none",
      "stroke-width": revised ? 2 : 1,
      "stroke-dasharray": r.provisional ? "3 2" : "",
      class: r.provisional ? "bar provisional" : revised ? "bar final revised" : "bar final",
      "data-day": r.day,
    });
    const wasClicks = revised && r.previous && isNum(r.previous.clicks) ? ` (was ${num(r.previous.clicks)} clicks)` : "";
    bar.append(el("title", {}, `${r.day}: ${num(r.metrics.clicks)} clicks, ${money(r.metrics.cost_micros)} cost — ${r.provisional ? "provisional" : r.status}${revised ? ` ${r.revised_at ?? ""}${wasClicks}` : ""}`));
    svg.append(bar);
    svg.append(el("text", { x: x + barW / 2, y: height - bottom + 14, "text-anchor": "middle" }, r.day.slice(5)));
    if (r.provisional) {
      svg.append(el("text", { x: x + barW / 2, y: height - bottom + 28, "text-anchor": "middle", class: "provisional-label" }, "prov."));
    } else if (revised) {
      svg.append(el("text", { x: x + barW / 2, y: height - bottom + 28, "text-anchor": "middle", class: "revised-label" }, "rev."));
    }
  });
}

async function refreshLive() {
  try {
    const live = await api(`/v1/advertisers/${session.advertiser}/realtime?minutes=60`);
    renderLive(live);
    $("live-status").textContent = `updated ${new Date().toLocaleTimeString()}, data as of ${live.as_of ?? "–"} (provisional)`;
  } catch (e) {
    $("live-status").textContent = `live series unavailable: ${e.message}`;
  }
}

function renderLive(live) {
  const svg = $("live");
  svg.replaceChildren();
  const width = svg.clientWidth || 900;
  const height = 140, bottom = 18;
  const end = Date.now();
  const start = Math.max(live.from_ms, end - 3_600_000);
  const span = Math.max(1, end - start);
  const max = Math.max(1, ...live.points.map((p) => p.metrics.clicks ?? 0));
  const barW = Math.max(1, (width * live.window_ms) / span - 0.5);
  for (const p of live.points) {
    const clicks = p.metrics.clicks ?? 0;
    const h = ((height - bottom - 4) * clicks) / max;
    const x = ((p.t - start) / span) * width;
    const bar = el("rect", { x, y: height - bottom - h, width: barW, height: h, fill: "#f0a500", class: "live-bar" });
    bar.append(el("title", {}, `${p.at}: ${clicks} clicks`));
    svg.append(bar);
  }
  svg.append(el("text", { x: 0, y: height - 4 }, new Date(start).toLocaleTimeString()));
  svg.append(el("text", { x: width, y: height - 4, "text-anchor": "end" }, "now"));
  svg.append(el("text", { x: 0, y: 12 }, `${num(live.totals.clicks)} clicks in the window, max ${num(max)} per 10 s`));
}

$("login-form").addEventListener("submit", login);
$("range-form").addEventListener("submit", showRange);
$("logout").addEventListener("click", logout);
const saved = sessionStorage.getItem("admetrics.session");
if (saved) {
  session = JSON.parse(saved);
  start("advertiser");
}
