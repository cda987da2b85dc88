"""``gemini-breaker admin``: the operator API over HTTP, as readable tables or ``--json``.

Every subcommand is one request to a replica's ``/admin/...`` endpoint (``--url``, default
http://127.0.0.1:8080; ``--token`` or ``$GEMINI_BREAKER_ADMIN_TOKEN``). An error answer is
printed with the server's own message and the command exits with status 1.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import quote

import httpx

from ..errors import OperatorError

DEFAULT_URL = "http://127.0.0.1:8080"
TOKEN_ENV = "GEMINI_BREAKER_ADMIN_TOKEN"
BREAKER_ACTIONS = ("open", "close", "reset", "force-open", "disable")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class CommandError(OperatorError):
    """The command failed; the message is printed and the exit status is 1."""


def add_parser(commands: Any) -> None:
    """Register ``admin`` and its subcommands on the top-level subparsers."""
    # The common options are accepted before or after the subcommand.
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, suppress=True)
    admin = commands.add_parser(
        "admin",
        help="read and steer a running proxy through its admin API",
        description="Read and steer a running proxy (and so the cluster) through its admin API.",
    )
    _add_common(admin, suppress=False)
    sub = admin.add_subparsers(dest="admin_command", required=True, metavar="COMMAND")
    sub.add_parser("state", parents=[common], help="routes, breakers and store, in one view")
    sub.add_parser("breakers", parents=[common], help="every breaker: state, counts, open until")
    sub.add_parser("routes", parents=[common], help="every route: chain, active model, pin")
    sub.add_parser("replicas", parents=[common], help="replicas heard from, config drift")
    audit = sub.add_parser("audit", parents=[common], help="recent operator actions")
    audit.add_argument("--limit", type=int, default=20, help="entries to show (default 20)")
    for action in BREAKER_ACTIONS:
        parser = sub.add_parser(action, parents=[common], help=_ACTION_HELP[action])
        parser.add_argument("model", help="the model whose breaker to act on")
        _add_who_and_why(parser)
    pin = sub.add_parser("pin", parents=[common], help="pin a route to one of its models")
    pin.add_argument("route")
    pin.add_argument("model", help="a model of the route's chain")
    pin.add_argument(
        "--ttl",
        required=True,
        type=_duration,
        help="how long the pin holds: seconds, or with a unit (90s, 10m, 2h, 1d; at most 7d)",
    )
    _add_who_and_why(pin)
    unpin = sub.add_parser("unpin", parents=[common], help="remove a route's pin")
    unpin.add_argument("route")
    _add_who_and_why(unpin)


_ACTION_HELP = {
    "open": "open the breaker (with the wait of its next trip)",
    "close": "close the breaker (trips kept)",
    "reset": "close the breaker and forget its trips",
    "force-open": "hold the breaker open until it is closed or reset",
    "disable": "let every request through; the breaker never trips",
}


def _add_common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--url", default=default(DEFAULT_URL), help=f"the proxy's base URL (default {DEFAULT_URL})"
    )
    parser.add_argument(
        "--token", default=default(None), help=f"admin bearer token (default: ${TOKEN_ENV})"
    )
    parser.add_argument(
        "--json", action="store_true", default=default(False), help="print the JSON answer"
    )
    parser.add_argument(
        "--timeout", type=float, default=default(10.0), help="seconds to wait for the answer"
    )


def _add_who_and_why(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reason", required=True, help="why (recorded in the audit)")
    parser.add_argument("--by", help="who (recorded in the audit; default: your login name)")


def _duration(text: str) -> float:
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 600, 90s, 10m, 2h, 1d)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def run(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Carry out one ``admin`` subcommand; the process exit status."""
    try:
        document = _request(args)
    except CommandError as exc:
        print(f"gemini-breaker admin: {exc}", file=err)
        return 1
    if args.json:
        print(json.dumps(document, indent=2, sort_keys=False), file=out)
    else:
        print(_render(args.admin_command, document), file=out)
    return 0


def _segment(name: str) -> str:
    """A model or route name as one path segment: ``@`` kept readable, what a URL would read
    otherwise (``?``, ``#``, ``%``, spaces) escaped."""
    return quote(name, safe="@:")


def _request(args: argparse.Namespace) -> dict[str, Any]:
    command: str = args.admin_command
    method, path, body = "GET", f"/admin/{command}", None
    if command == "audit":
        path += f"?limit={args.limit}"
    elif command in BREAKER_ACTIONS:
        method, path = "POST", f"/admin/breakers/{_segment(args.model)}/{command.replace('-', '_')}"
        body = _who_and_why(args)
    elif command == "pin":
        method, path = "POST", f"/admin/routes/{_segment(args.route)}/pin"
        body = {"model": args.model, "ttl_seconds": args.ttl, **_who_and_why(args)}
    elif command == "unpin":
        method, path = "POST", f"/admin/routes/{_segment(args.route)}/unpin"
        body = _who_and_why(args)
    token = args.token or os.environ.get(TOKEN_ENV) or None
    headers = {"authorization": f"Bearer {token}"} if token else {}
    url = args.url.rstrip("/") + path
    try:
        response = httpx.request(method, url, json=body, headers=headers, timeout=args.timeout)
    except httpx.HTTPError as exc:
        raise CommandError(f"cannot reach {args.url}: {type(exc).__name__}: {exc}") from None
    try:
        document = response.json()
    except ValueError:
        document = None
    if response.is_error:
        error = document.get("error") if isinstance(document, dict) else None
        if isinstance(error, dict) and "message" in error:
            raise CommandError(
                f"{response.status_code} {error.get('status', '')}: {error['message']}"
            )
        raise CommandError(f"{response.status_code}: {response.text.strip()[:500]}")
    if not isinstance(document, dict):
        raise CommandError(f"{url} did not answer with a JSON object; is it a gemini-breaker?")
    return document


def _who_and_why(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"reason": args.reason}
    by = args.by or _login()
    if by:
        body["by"] = by
    return body


def _login() -> str | None:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in this environment: the server says "admin"
        return None


# -- rendering --------------------------------------------------------------------------------


def _render(command: str, doc: dict[str, Any]) -> str:
    renderers: dict[str, Callable[[dict[str, Any]], str]] = {
        "state": _render_state,
        "breakers": _render_breakers,
        "routes": _render_routes,
        "replicas": _render_replicas,
        "audit": _render_audit,
        "pin": _render_pin,
        "unpin": _render_unpin,
    }
    return renderers.get(command, _render_breaker_action)(doc)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns, two spaces apart; ``-`` for empty cells."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]
    lines = [headers, *cells]
    return "\n".join(
        "  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    return str(value)


def _seconds(seconds: float) -> str:
    """A short human duration: 45s, 4m05s, 2h10m, 3d04h."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _open_for(breaker: dict[str, Any], now_ms: int) -> str:
    if breaker["state"] == "open" and breaker["open_until_ms"] > now_ms:
        return _seconds((breaker["open_until_ms"] - now_ms) / 1000)
    return ""


def _breaker_rows(breakers: dict[str, Any], now_ms: int) -> list[list[Any]]:
    return [
        [
            model,
            b["state"],
            b["epoch"],
            b["calls"],
            b["failures"],
            b["trips"],
            _open_for(b, now_ms),
            b["reason"],
            b["forced_by"],
        ]
        for model, b in breakers.items()
    ]


_BREAKER_HEADERS = (
    "MODEL",
    "STATE",
    "EPOCH",
    "CALLS",
    "FAILURES",
    "TRIPS",
    "OPEN FOR",
    "REASON",
    "BY",
)


def _pin_text(pin: dict[str, Any] | None) -> str:
    if not pin:
        return ""
    return (
        f"{pin['model']} for {_seconds(pin['expires_in_seconds'])} ({pin['by']}: {pin['reason']})"
    )


def _render_state(doc: dict[str, Any]) -> str:
    store = doc["store"]
    header = (
        f"replica {doc['replica']}  store {store['mode']} {store['namespace']}"
        f"{'  DEGRADED (fail-static)' if store['degraded'] else ''}"
        f"{'  CONFIG DRIFT' if doc.get('config_drift') else ''}"
    )
    routes = table(
        ("ROUTE", "ACTIVE", "EPOCH", "PIN", "CHAIN"),
        [
            [
                route,
                r["active"] or "none",
                r["active_epoch"],
                _pin_text(r["pin"]),
                " > ".join(r["chain"]),
            ]
            for route, r in doc["routes"].items()
        ],
    )
    breakers = table(_BREAKER_HEADERS, _breaker_rows(doc["breakers"], doc["now_ms"]))
    parts = [header, "", routes, "", breakers]
    alerts = {
        "credential alerts": doc.get("credential_alerts"),
        "quota alerts": doc.get("quota_alerts"),
        "schema drift": doc.get("schema_drift"),
    }
    for name, counts in alerts.items():
        if counts:
            parts.append(f"{name}: " + ", ".join(f"{m} {n}" for m, n in counts.items()))
    quotas = doc.get("quotas") or []
    if quotas:
        parts += [
            "",
            table(
                ("KEY", "MODEL", "COOLING FOR", "RATE", "PER DAY"),
                [
                    [
                        q["key_digest"],
                        q["model"],
                        _seconds(max(0, q["cooling_until_ms"] - doc["now_ms"]) / 1000),
                        f"{q['rate_scale']:.0%}",
                        "yes" if q["per_day"] else "no",
                    ]
                    for q in quotas
                ],
            ),
        ]
    return "\n".join(parts)


def _render_breakers(doc: dict[str, Any]) -> str:
    rows = _breaker_rows(doc["breakers"], doc["now_ms"])
    for row, b in zip(rows, doc["breakers"].values(), strict=True):
        row.append(", ".join(b.get("routes", [])))
    return table((*_BREAKER_HEADERS, "ROUTES"), rows)


def _render_routes(doc: dict[str, Any]) -> str:
    rows = []
    for route, r in doc["routes"].items():
        pin = r["pin"]
        rows.append(
            [
                route,
                r["active"] or "none",
                pin["model"] if pin else "",
                _seconds(pin["expires_in_seconds"]) if pin else "",
                pin["by"] if pin else "",
                pin["reason"] if pin else "",
                " > ".join(r["effective_chain"]),
            ]
        )
    return table(("ROUTE", "ACTIVE", "PINNED", "EXPIRES IN", "BY", "WHY", "CHAIN NOW"), rows)


def _render_replicas(doc: dict[str, Any]) -> str:
    rows = [
        [
            r["replica"] + (" (this one)" if r["self"] else ""),
            f"{_seconds(r['seen_seconds_ago'])} ago",
            "yes" if r["alive"] else "no",
            r["routes_digest"] + ("" if r["same_routes"] else " (differs)"),
        ]
        for r in doc["replicas"]
    ]
    lines = [table(("REPLICA", "LAST SEEN", "ALIVE", "ROUTES DIGEST"), rows)]
    if doc["config_drift"]:
        lines.append("WARNING: config drift: live replicas disagree on the routes")
    else:
        lines.append("config drift: none")
    if doc["degraded"]:
        lines.append("this replica is fail-static: the list is the last one it saw")
    return "\n".join(lines)


def _result_text(entry: dict[str, Any]) -> str:
    result = entry.get("result") or {}
    parts = []
    if "state" in result:
        parts.append(str(result["state"]))
    if result.get("model"):
        parts.append(f"pinned {result['model']}")
    if "unpinned" in result:
        parts.append(f"unpinned {result['unpinned'] or 'nothing'}")
    active = result.get("active") or {}
    if active:
        parts.append("active " + ", ".join(f"{r}={m or 'none'}" for r, m in active.items()))
    return "; ".join(parts)


def _render_audit(doc: dict[str, Any]) -> str:
    rows = [
        [
            _when(e["at_ms"]),
            e["action"],
            e["target"],
            e["by"],
            e["reason"],
            e["epoch"],
            _result_text(e),
        ]
        for e in doc["entries"]
    ]
    if not rows:
        return "no audit entries"
    return table(("WHEN", "ACTION", "TARGET", "BY", "REASON", "EPOCH", "RESULT"), rows)


def _render_breaker_action(doc: dict[str, Any]) -> str:
    b = doc["breaker"]
    line = f"breaker {doc['model']}: {b['state']} (epoch {doc['epoch']})"
    if b["state"] == "open" and b["open_until_ms"]:
        line += f", open until {_when(b['open_until_ms'])}"
    active = ", ".join(f"{r} -> {m or 'none'}" for r, m in doc["active"].items())
    return line + (f"\nactive: {active}" if active else "")


def _render_pin(doc: dict[str, Any]) -> str:
    pin = doc["pin"]
    return (
        f"route {doc['route']} pinned to {pin['model']} until {_when(pin['until_ms'])} "
        f"(epoch {doc['epoch']})\nactive: {doc['active'] or 'none'}; "
        f"chain now: {' > '.join(doc['effective_chain'])}"
    )


def _render_unpin(doc: dict[str, Any]) -> str:
    if not doc["changed"]:
        return f"route {doc['route']} was not pinned; nothing changed"
    return (
        f"route {doc['route']} unpinned (epoch {doc['epoch']})\n"
        f"active: {doc['active'] or 'none'}; chain now: {' > '.join(doc['effective_chain'])}"
    )
