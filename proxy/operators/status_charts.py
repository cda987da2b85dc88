"""The status page's charts of the whole cluster, drawn with the vendored uPlot from
``GET /admin/series`` (see ``proxy.cluster.series``): per route, requests per second by
serving model (stacked), errors and sheds per second, latency p50/p99, each with the breaker
transitions and operator actions marked on the time axis; a breaker timeline per model
(closed / half-open / open bands); and the replicas with their health and routes digest.

Kept apart from ``status_page`` (the tables and actions) and joined into its one script:
``STYLE``, ``BODY`` and ``SCRIPT`` here use the page's helpers (``$``, ``el``, ``call``).
For the tests and the operator alike, each requests chart also states in its
``data-serving`` attribute which model served most in each bucket, in time order (repeats
collapsed), and lists its marks as text below it.
"""

from __future__ import annotations

STYLE = """
.route-charts { margin: 0 0 1em; }
.charts { display: flex; flex-wrap: wrap; gap: .5em 1.5em; }
.chart h4 { font-size: .95em; margin: .2em 0; font-weight: 600; }
.marks { margin: .3em 0; padding-left: 1.4em; color: #57606a; font-size: .9em;
  max-height: 8em; overflow-y: auto; }
.timeline { position: relative; height: 1.4em; width: 720px; background: #f6f8fa;
  border: 1px solid #d0d7de; }
.band { position: absolute; top: 0; bottom: 0; }
.band-closed { background: #1a7f37; }
.band-half_open { background: #bf8700; }
.band-open, .band-forced_open { background: #cf222e; }
.band-disabled, .band-unknown { background: #6e7781; }
.timeline-row { display: flex; align-items: center; gap: .8em; margin: .25em 0; }
.timeline-row .name { width: 14em; }
.health-alive { color: #1a7f37; font-weight: 600; }
.health-silent { color: #cf222e; font-weight: 600; }
"""

BODY = """
<h2>Cluster traffic, all replicas</h2>
<div id="series-note" class="muted"></div>
<div id="route-charts"></div>
<h2>Breaker timeline</h2>
<div id="timelines"></div>
<h2>Replicas</h2>
<div id="replicas-note" class="muted"></div>
<table id="replicas">
  <thead><tr><th>replica</th><th>health</th><th>last heartbeat</th><th>routes digest</th>
  </tr></thead>
  <tbody></tbody>
</table>
"""

SCRIPT = r"""
const COLOURS = ["#0969da", "#8250df", "#1b7c83", "#bc4c00", "#6e7781"];
const MARK_COLOURS = {closed: "#1a7f37", half_open: "#bf8700", open: "#cf222e",
                      forced_open: "#cf222e", disabled: "#6e7781"};
const ACTION_COLOUR = "#0550ae";
const CHART_WIDTH = 420, CHART_HEIGHT = 170;
const charts = {};
let lastSeriesMs = 0;

function marksOf(doc) {
  const marks = [];
  for (const t of doc.transitions || []) {
    marks.push({at: t.at_ms / 1000, colour: MARK_COLOURS[t.to] || "#6e7781",
                text: t.model + " " + t.from + " \u2192 " + t.to, dashed: false});
  }
  for (const a of doc.actions || []) {
    marks.push({at: a.at_ms / 1000, colour: ACTION_COLOUR,
                text: a.action + " " + a.target + " by " + a.by, dashed: true});
  }
  marks.sort((a, b) => a.at - b.at);
  return marks;
}

// A uPlot plugin drawing each mark as a vertical line across the plot.
function markPlugin(holder) {
  return {hooks: {draw: [(u) => {
    const ctx = u.ctx;
    const top = u.bbox.top, bottom = u.bbox.top + u.bbox.height;
    ctx.save();
    ctx.lineWidth = 2 * devicePixelRatio;
    for (const mark of holder.marks) {
      const x = Math.round(u.valToPos(mark.at, "x", true));
      if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
      ctx.strokeStyle = mark.colour;
      ctx.setLineDash(mark.dashed ? [6 * devicePixelRatio, 4 * devicePixelRatio] : []);
      ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, bottom); ctx.stroke();
    }
    ctx.restore();
  }]}};
}

function makeChart(container, title, series, holder, yLabel, stacked) {
  const box = el("div", null, "chart");
  box.appendChild(el("h4", title));
  container.appendChild(box);
  const options = {
    width: CHART_WIDTH, height: CHART_HEIGHT,
    scales: {x: {time: true}, y: {range: (u, min, max) => [0, Math.max(max, 0.1) * 1.1]}},
    axes: [{}, {label: yLabel, size: 50}],
    series: [{}, ...series],
    bands: stacked ? series.slice(1).map((_, i) => ({series: [i + 2, i + 1]})) : [],
    plugins: [markPlugin(holder)],
    legend: {live: true},
  };
  const empty = [[], ...series.map(() => [])];
  return {box: box, plot: new uPlot(options, empty, box)};
}

// Stacked areas: each model's line is the sum of its own rate and the ones below it in the
// chain's order; the legend shows the model's own rate.
function stack(layers) {
  const sums = [];
  let running = layers.length ? layers[0].map(() => 0) : [];
  for (const layer of layers) {
    running = running.map((v, i) => v + (layer[i] || 0));
    sums.push(running);
  }
  return sums;
}

function routeSection(route, doc) {
  let holder = charts[route];
  const models = [...(doc.routes[route].chain || [])];
  for (const model of Object.keys(doc.routes[route].served)) {
    if (!models.includes(model)) models.push(model);
  }
  const key = models.join(",");
  if (holder && holder.key === key) return holder;
  if (holder) holder.section.remove();
  const section = el("section", null, "route-charts");
  section.dataset.route = route;
  section.appendChild(el("h3", "route " + route));
  const row = el("div", null, "charts");
  section.appendChild(row);
  const marksList = el("ol", null, "marks");
  holder = {key: key, models: models, marks: [], section: section, marksList: marksList};
  const raw = {};
  holder.raw = raw;
  const value = (u, v, si, i) => {
    const own = raw[si];
    return own && i !== null && own[i] !== undefined ? own[i].toFixed(2) : "-";
  };
  holder.requests = makeChart(row, "requests/s by serving model (stacked)",
    models.map((m, i) => ({label: m || "(none)", stroke: COLOURS[i % COLOURS.length],
                          fill: COLOURS[i % COLOURS.length] + "55", width: 1.5, value: value})),
    holder, "req/s", true);
  holder.requests.box.dataset.chart = "requests";
  holder.errors = makeChart(row, "errors and sheds per second", [
    {label: "5xx", stroke: "#cf222e", width: 1.5},
    {label: "429 (shed)", stroke: "#bf8700", width: 1.5},
    {label: "fallbacks", stroke: "#8250df", width: 1.5, dash: [4, 3]}], holder, "/s");
  holder.errors.box.dataset.chart = "errors";
  holder.latency = makeChart(row, "latency (s)", [
    {label: "p50", stroke: "#0969da", width: 1.5},
    {label: "p99", stroke: "#bc4c00", width: 1.5}], holder, "s");
  holder.latency.box.dataset.chart = "latency";
  section.appendChild(el("div", "marks: transitions (solid) and operator actions (dashed)",
                         "muted"));
  section.appendChild(marksList);
  $("route-charts").appendChild(section);
  charts[route] = holder;
  return holder;
}

function servingSequence(models, layers) {
  const sequence = [];
  const buckets = layers.length ? layers[0].length : 0;
  for (let i = 0; i < buckets; i++) {
    let best = -1, most = 0;
    layers.forEach((layer, m) => { if (layer[i] > most) { most = layer[i]; best = m; } });
    if (best < 0) continue;
    const model = models[best] || "(none)";
    if (sequence[sequence.length - 1] !== model) sequence.push(model);
  }
  return sequence;
}

// The first bucket worth showing: a little before the first traffic in the window (a fresh
// cluster's charts would otherwise be a long flat line), at least MIN_POINTS from the end.
const MIN_POINTS = 30;
function firstShown(doc) {
  const n = doc.times_ms.length;
  let first = n;
  for (const data of Object.values(doc.routes)) {
    for (const counts of [...Object.values(data.served), data["4xx"], data["429"], data["5xx"]]) {
      const i = counts.findIndex((c) => c > 0);
      if (i >= 0 && i < first) first = i;
    }
  }
  return Math.max(0, Math.min(first - 2, n - MIN_POINTS));
}

function renderCharts(doc, from) {
  const seconds = doc.resolution_seconds;
  const cut = (values) => values.slice(from);
  const xs = cut(doc.times_ms).map((t) => t / 1000);
  const perSecond = (counts) => cut(counts).map((c) => c / seconds);
  const marks = marksOf(doc);
  const routes = Object.keys(doc.routes).sort();
  for (const route of routes) {
    const data = doc.routes[route];
    const holder = routeSection(route, doc);
    holder.marks = marks;
    const layers = holder.models.map((m) => perSecond(data.served[m] || xs.map(() => 0)));
    layers.forEach((layer, i) => { holder.raw[i + 1] = layer; });
    holder.requests.plot.setData([xs, ...stack(layers)]);
    holder.requests.box.dataset.serving = servingSequence(holder.models, layers).join(" > ");
    holder.requests.box.dataset.marks = String(marks.length);
    holder.errors.plot.setData([xs, perSecond(data["5xx"]), perSecond(data["429"]),
                                perSecond(data.fallbacks)]);
    holder.latency.plot.setData([xs, cut(data.latency_p50), cut(data.latency_p99)]);
    holder.marksList.replaceChildren(...marks.map((m) => {
      const item = el("li", clock(m.at * 1000) + "  " + m.text);
      item.dataset.kind = m.dashed ? "action" : "transition";
      return item;
    }));
  }
  for (const route of Object.keys(charts)) {
    if (!routes.includes(route)) { charts[route].section.remove(); delete charts[route]; }
  }
  const minutes = doc.times_ms.length * seconds / 60;
  $("series-note").textContent = "kept: the last " + minutes.toFixed(minutes < 2 ? 1 : 0)
    + " min at " + seconds + " s per point, summed over every replica's heartbeats";
}

// Bands of each model's breaker states over the window, from the transitions in it (the
// state before the first one is that transition's "from") and the current state.
function renderTimelines(doc, breakers, from) {
  const start = doc.times_ms[from], end = doc.now_ms;
  const span = Math.max(1, end - start);
  const models = Object.keys(doc.models).sort();
  const rows = models.map((model) => {
    const seen = (doc.transitions || []).filter((t) => t.model === model);
    const current = breakers[model] ? breakers[model].state : "unknown";
    const bands = [];
    let from = start;
    let state = seen.length ? seen[0].from : current;
    for (const t of seen) {
      bands.push([from, t.at_ms, state]);
      from = t.at_ms; state = t.to;
    }
    bands.push([from, end, seen.length ? state : current]);
    const track = el("div", null, "timeline");
    for (const [bandStart, b, s] of bands) {
      const a = Math.max(bandStart, start);
      if (b <= a) continue;
      const band = el("div", null, "band band-" + (MARK_COLOURS[s] ? s : "unknown"));
      band.dataset.state = s;
      band.title = s + " from " + clock(a) + " to " + clock(b);
      band.style.left = (100 * (a - start) / span).toFixed(3) + "%";
      band.style.width = (100 * (b - a) / span).toFixed(3) + "%";
      track.appendChild(band);
    }
    const row = el("div", null, "timeline-row");
    row.dataset.model = model;
    row.appendChild(el("span", model, "name"));
    row.appendChild(track);
    return row;
  });
  $("timelines").replaceChildren(...rows);
}

function renderReplicas(doc) {
  const rows = (doc.replicas || []).map((r) => {
    const row = el("tr");
    row.dataset.replica = r.replica;
    row.appendChild(el("td", r.replica + (r.self ? " (this one)" : "")));
    row.appendChild(el("td", r.alive ? "alive" : "silent",
                       r.alive ? "health-alive" : "health-silent"));
    row.appendChild(el("td", r.seen_seconds_ago + " s ago"));
    row.appendChild(el("td", r.routes_digest + (r.same_routes ? "" : " (differs)")));
    return row;
  });
  $("replicas").tBodies[0].replaceChildren(...rows);
  $("replicas-note").textContent = doc.config_drift
    ? "live replicas disagree on the routes (config drift)" : "";
}

async function pollCluster(breakers) {
  if (typeof uPlot === "undefined") {
    $("series-note").textContent = "the charting library did not load";
    return;
  }
  const [series, replicas] = await Promise.allSettled([
    Date.now() - lastSeriesMs >= SERIES_MS ? call("GET", "series") : Promise.resolve(null),
    call("GET", "replicas")]);
  if (series.status === "fulfilled" && series.value) {
    lastSeriesMs = Date.now();
    try {
      const from = firstShown(series.value);
      renderCharts(series.value, from);
      renderTimelines(series.value, breakers, from);
      document.body.dataset.series = "true";
    } catch (e) {  // the tables below must keep working
      $("series-note").textContent = "the charts failed: " + e.message;
    }
  } else if (series.status === "rejected") {
    $("series-note").textContent = "series not available: " + series.reason.message;
  }
  if (replicas.status === "fulfilled") renderReplicas(replicas.value);
}
"""
