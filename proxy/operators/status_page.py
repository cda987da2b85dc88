"""The live status page at ``GET /admin/status``: one static HTML document with a little vanilla
JavaScript (no build step, nothing loaded from elsewhere: the charting library, uPlot, is
served by the proxy, see ``static_assets``) that polls ``/admin/state``, ``/admin/audit``,
``/admin/replicas`` every second and ``/admin/series`` every two, draws the cluster's charts
(``status_charts``) and posts the operator actions to the admin API.

The page itself holds no data: everything it shows comes from the admin API, fetched by the
page with the operator's token. Access to the page follows the admin API's, except that with a
token configured the page is served without one, because a browser cannot send an
``Authorization`` header when it opens a URL; the page then asks for the token (a password field,
kept in the tab's ``sessionStorage``) and sends it as ``Authorization: Bearer`` on every fetch.
Without a token, the page is refused exactly as every other admin path (disabled, or loopback
callers only).

Everything the page inserts into the document is set with ``textContent``, never ``innerHTML``,
and a Content-Security-Policy admits only this page's own script and style (by hash), the
vendored script (by its Subresource Integrity hash), stylesheets of this origin, requests to
this origin, and no framing.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from . import status_charts as charts
from .admin_auth import AdminAuth
from .static_assets import SCRIPT as UPLOT_SCRIPT
from .static_assets import STYLESHEET as UPLOT_STYLESHEET
from .static_assets import Assets

#: Path of the page; its fetches are relative to it (``state``, ``audit``, ``breakers/...``).
PATH = "/admin/status"
POLL_MILLISECONDS = 1000
#: The cluster series changes once per heartbeat at most; the page reads it this often.
SERIES_MILLISECONDS = 2000
AUDIT_LIMIT = 20
#: Breaker actions offered as buttons, in this order.
BUTTONS = ("close", "reset", "open", "force_open", "disable")

STYLE = (
    """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1f2328; }
h1 { font-size: 1.3em; margin: 0 0 .3em; }
h2 { font-size: 1.1em; margin: 1.2em 0 .4em; }
table { border-collapse: collapse; }
th, td { border-bottom: 1px solid #d0d7de; padding: .25em .6em; text-align: left;
  vertical-align: top; }
th { background: #f6f8fa; }
.badge { display: inline-block; padding: 0 .5em; border-radius: .8em; color: #fff;
  font-weight: 600; }
.state-closed { background: #1a7f37; }
.state-half_open { background: #bf8700; }
.state-open, .state-forced_open { background: #cf222e; }
.state-disabled, .state-unknown { background: #6e7781; }
.bar { display: flex; flex-wrap: wrap; gap: 1em; align-items: center; margin: .5em 0; }
.store-ok { color: #1a7f37; font-weight: 600; }
.store-degraded { color: #fff; background: #cf222e; padding: 0 .5em; font-weight: 600; }
#error { color: #cf222e; font-weight: 600; }
#result { color: #57606a; }
.muted { color: #57606a; }
button { margin: 0 .15em .15em 0; }
input[type=number] { width: 6em; }
#breakers td:last-child, #routes td:last-child { white-space: nowrap; }
"""
    + charts.STYLE
)

SCRIPT = r"""
"use strict";
const SERIES_MS = __SERIES_MS__;
const POLL_MS = __POLL_MS__;
const AUDIT_LIMIT = __AUDIT_LIMIT__;
const BUTTONS = __BUTTONS__;
const TOKEN_KEY = "gemini-breaker-admin-token";
const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function headers(json) {
  const h = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) h["Authorization"] = "Bearer " + token;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

async function call(method, path, body) {
  const response = await fetch(path, {
    method: method,
    headers: headers(body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
    credentials: "omit",
  });
  let doc = null;
  try { doc = await response.json(); } catch (e) { doc = null; }
  if (!response.ok) {
    const message = doc && doc.error && doc.error.message ? doc.error.message : "";
    const err = new Error("HTTP " + response.status + (message ? ": " + message : ""));
    err.status = response.status;
    throw err;
  }
  return doc;
}

function clock(ms) {
  return ms ? new Date(ms).toLocaleTimeString() : "";
}

function untilText(untilMs, nowMs) {
  if (!untilMs) return "";
  const left = (untilMs - nowMs) / 1000;
  return clock(untilMs) + (left > 0 ? " (in " + left.toFixed(1) + " s)" : " (passed)");
}

function setCells(row, values) {
  values.forEach((value, i) => {
    const text = value === undefined || value === null ? "" : String(value);
    if (row.cells[i].textContent !== text) row.cells[i].textContent = text;
  });
}

function keyedRow(tbody, key, attr, columns, build) {
  for (const row of tbody.rows) {
    if (row.dataset[attr] === key) return row;
  }
  const row = document.createElement("tr");
  row.dataset[attr] = key;
  for (let i = 0; i < columns; i++) row.appendChild(document.createElement("td"));
  build(row);
  tbody.appendChild(row);
  return row;
}

function dropOthers(tbody, attr, keep) {
  for (const row of Array.from(tbody.rows)) {
    if (!keep.has(row.dataset[attr])) row.remove();
  }
}

function reason() {
  return $("reason").value.trim() || "status page";
}

async function act(label, path, body) {
  $("result").textContent = label + " ...";
  try {
    const doc = await call("POST", path, body);
    const epoch = doc && doc.epoch !== undefined ? " (epoch " + doc.epoch + ")" : "";
    $("result").textContent = label + ": done" + epoch;
  } catch (e) {
    $("result").textContent = label + ": failed, " + e.message;
  }
  poll(true);
}

function breakerAction(model, action) {
  act(action + " " + model,
      "breakers/" + encodeURIComponent(model) + "/" + action,
      {reason: reason(), by: "status-page"});
}

function renderRoutes(routes, nowMs) {
  const tbody = $("routes").tBodies[0];
  const names = Object.keys(routes).sort();
  for (const name of names) {
    const route = routes[name];
    const row = keyedRow(tbody, name, "route", 6, (r) => {
      const select = el("select");
      for (const model of route.chain) {
        const option = el("option", model);
        option.value = model;
        select.appendChild(option);
      }
      const ttl = el("input");
      ttl.type = "number"; ttl.min = "1"; ttl.value = "1800"; ttl.size = 6;
      ttl.title = "pin time to live, seconds";
      const pin = el("button", "pin");
      pin.dataset.action = "pin";
      pin.addEventListener("click", () => act(
        "pin " + name + " to " + select.value,
        "routes/" + encodeURIComponent(name) + "/pin",
        {model: select.value, ttl_seconds: Number(ttl.value), reason: reason(),
         by: "status-page"}));
      const unpin = el("button", "unpin");
      unpin.dataset.action = "unpin";
      unpin.addEventListener("click", () => act(
        "unpin " + name, "routes/" + encodeURIComponent(name) + "/unpin",
        {reason: reason(), by: "status-page"}));
      r.cells[5].append(select, " for ", ttl, " s ", pin, unpin);
    });
    row.cells[2].className = "active";
    const pin = route.pin;
    const pinText = pin
      ? pin.model + " for " + Number(pin.expires_in_seconds).toFixed(0) + " s, by " + pin.by
        + ": " + pin.reason
      : "";
    setCells(row, [name, route.chain.join(" > "), route.active || "(none)",
                   route.active_epoch, pinText]);
  }
  dropOthers(tbody, "route", new Set(names));
}

function renderBreakers(breakers, nowMs) {
  const tbody = $("breakers").tBodies[0];
  const models = Object.keys(breakers).sort();
  for (const model of models) {
    const b = breakers[model];
    const row = keyedRow(tbody, model, "model", 8, (r) => {
      r.cells[1].appendChild(el("span", "", "badge"));
      for (const action of BUTTONS) {
        const button = el("button", action.replace("_", "-"));
        button.dataset.action = action;
        button.addEventListener("click", () => breakerAction(model, action));
        r.cells[7].appendChild(button);
      }
    });
    if (row.cells[0].textContent !== model) row.cells[0].textContent = model;
    const badge = row.cells[1].firstChild;
    const known = ["closed", "half_open", "open", "forced_open", "disabled"];
    badge.className = "badge state-" + (known.includes(b.state) ? b.state : "unknown");
    if (badge.textContent !== b.state) badge.textContent = b.state;
    row.dataset.state = b.state;
    const why = [b.reason, b.forced_by ? "by " + b.forced_by : ""].filter(Boolean).join(", ");
    const cells = [b.epoch, b.failures + " / " + b.calls, b.trips,
                   untilText(b.open_until_ms, nowMs), why];
    cells.forEach((value, i) => {
      const text = String(value);
      if (row.cells[i + 2].textContent !== text) row.cells[i + 2].textContent = text;
    });
  }
  dropOthers(tbody, "model", new Set(models));
}

let auditIds = "";
function renderAudit(entries) {
  const ids = entries.map((e) => e.id).join(",");
  if (ids === auditIds) return;
  auditIds = ids;
  const tbody = $("audit").tBodies[0];
  const rows = entries.map((e) => {
    const row = el("tr");
    row.dataset.id = e.id;
    for (const value of [clock(e.at_ms), e.action, e.target, e.by, e.reason, e.via, e.epoch]) {
      row.appendChild(el("td", value));
    }
    return row;
  });
  tbody.replaceChildren(...rows);
}

function badge(state) {
  const known = ["closed", "half_open", "open", "forced_open", "disabled"];
  return el("span", state, "badge state-" + (known.includes(state) ? state : "unknown"));
}

let transitionKeys = "";
function renderTransitions(entries) {
  const keys = entries.map((t) => t.model + "@" + t.epoch).join(",");
  if (keys === transitionKeys) return;
  transitionKeys = keys;
  const rows = entries.map((t) => {
    const row = el("tr");
    row.appendChild(el("td", clock(t.at_ms)));
    row.appendChild(el("td", t.model));
    const change = el("td");
    change.appendChild(badge(t.from));
    change.appendChild(document.createTextNode(" \u2192 "));
    change.appendChild(badge(t.to));
    row.appendChild(change);
    for (const value of [t.reason, t.epoch]) row.appendChild(el("td", value));
    return row;
  });
  $("transitions").tBodies[0].replaceChildren(...rows);
}

function renderStore(doc) {
  const store = $("store");
  const degraded = Boolean(doc.store && doc.store.degraded);
  store.textContent = degraded
    ? "store DEGRADED (fail-static: breakers are per replica, actions refused)"
    : "store ok (" + (doc.store ? doc.store.mode : "?") + ")";
  store.className = degraded ? "store-degraded" : "store-ok";
  store.dataset.degraded = String(degraded);
  $("drift").textContent = doc.config_drift ? "replicas disagree on routes (config drift)" : "";
  $("replica").textContent = "replica " + doc.replica;
}

let timer = null;
let polling = false;
async function poll(now) {
  if (timer !== null) { clearTimeout(timer); timer = null; }
  if (polling) { if (now) timer = setTimeout(poll, 100); return; }
  polling = true;
  try {
    const [state, audit] = await Promise.allSettled([
      call("GET", "state"), call("GET", "audit?limit=" + AUDIT_LIMIT)]);
    if (state.status === "rejected") throw state.reason;
    const doc = state.value;
    renderStore(doc);
    renderRoutes(doc.routes || {}, doc.now_ms);
    renderBreakers(doc.breakers || {}, doc.now_ms);
    renderTransitions(doc.transitions || []);
    await pollCluster(doc.breakers || {});
    if (audit.status === "fulfilled") {
      renderAudit(audit.value.entries || []);
      $("audit-note").textContent = "";
    } else {
      $("audit-note").textContent = "audit not available: " + audit.reason.message;
    }
    $("error").textContent = "";
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    document.body.dataset.loaded = "true";
  } catch (e) {
    let text = "cannot read the admin API: " + e.message;
    if (e.status === 401) text += " (enter the admin token above)";
    $("error").textContent = text;
  } finally {
    polling = false;
    timer = setTimeout(poll, POLL_MS);
  }
}

"""
INIT = r"""
$("token").value = sessionStorage.getItem(TOKEN_KEY) || "";
$("token").addEventListener("change", () => {
  const value = $("token").value.trim();
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
  poll(true);
});
poll(true);
"""
SCRIPT = (
    (SCRIPT + charts.SCRIPT + INIT)
    .replace("__POLL_MS__", str(POLL_MILLISECONDS))
    .replace("__SERIES_MS__", str(SERIES_MILLISECONDS))
    .replace("__AUDIT_LIMIT__", str(AUDIT_LIMIT))
    .replace("__BUTTONS__", json.dumps(list(BUTTONS)))
)

BODY = """
<h1>gemini-breaker status</h1>
<div class="bar">
  <span id="store" class="muted">store ?</span>
  <span id="drift" class="store-degraded"></span>
  <span id="replica" class="muted"></span>
  <span id="updated" class="muted">loading ...</span>
</div>
<div class="bar">
  <label>admin token <input id="token" type="password" autocomplete="off" size="24"></label>
  <label>reason <input id="reason" type="text" value="status page" size="32"></label>
  <span id="result"></span>
</div>
<div id="error" role="alert"></div>
__CHARTS__
<h2>Routes</h2>
<table id="routes">
  <thead><tr><th>route</th><th>chain</th><th>active model</th><th>epoch</th><th>pin</th>
  <th>pin / unpin</th></tr></thead>
  <tbody></tbody>
</table>
<h2>Breakers</h2>
<table id="breakers">
  <thead><tr><th>model</th><th>state</th><th>epoch</th><th>failures / calls</th><th>trips</th>
  <th>open until</th><th>reason</th><th>actions</th></tr></thead>
  <tbody></tbody>
</table>
<h2>Recent transitions (seen by this replica)</h2>
<table id="transitions">
  <thead><tr><th>when</th><th>model</th><th>change</th><th>reason</th><th>epoch</th></tr></thead>
  <tbody></tbody>
</table>
<h2>Recent audit entries</h2>
<div id="audit-note" class="muted"></div>
<table id="audit">
  <thead><tr><th>when</th><th>action</th><th>target</th><th>by</th><th>reason</th><th>via</th>
  <th>epoch</th></tr></thead>
  <tbody></tbody>
</table>
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


BODY = BODY.replace("__CHARTS__", charts.BODY)


def page(assets: Assets) -> tuple[str, dict[str, str]]:
    """The document and its headers; the vendored script is pinned by its hash."""
    uplot = assets.integrity(UPLOT_SCRIPT)
    document = (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="referrer" content="no-referrer">\n'
        '<link rel="icon" href="data:,">\n'
        "<title>gemini-breaker status</title>\n"
        f'<link rel="stylesheet" href="static/{UPLOT_STYLESHEET}">\n'
        f"<style>{STYLE}</style>\n"
        f'<script src="static/{UPLOT_SCRIPT}" integrity="{uplot}"></script>\n'
        f"</head>\n<body>{BODY}<script>{SCRIPT}</script>\n</body>\n</html>\n"
    )
    headers = {
        "content-security-policy": (
            f"default-src 'none'; script-src {_sha256(SCRIPT)} '{uplot}'; "
            f"style-src 'self' {_sha256(STYLE)}; connect-src 'self'; img-src data:; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        ),
        "cache-control": "no-store",
        "x-content-type-options": "nosniff",
        "x-frame-options": "DENY",
        "referrer-policy": "no-referrer",
    }
    return document, headers


def status_page(auth: AdminAuth, assets: Assets) -> Callable[[Request], Awaitable[Response]]:
    """The endpoint serving the page, with the access rule of the module docstring."""
    document, headers = page(assets)

    async def endpoint(request: Request) -> Response:
        if auth.mode != "token":
            refused = auth.check(request)
            if refused is not None:
                return refused
        return HTMLResponse(document, headers=headers)

    return endpoint
