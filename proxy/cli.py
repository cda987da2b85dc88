"""The ``gemini-breaker`` command: ``serve`` runs the proxy, ``simulate`` the fake Gemini,
``admin`` reads and steers a running proxy through its admin API, ``demo`` shows it all
working against the simulator."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from .config_load import SETTINGS_JSON_ENV, build_settings, load_raw
from .errors import ConfigError
from .logs import configure_logging
from .operators import admin_cli, certs, demo


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "admin":
            return admin_cli.run(args)
        if args.command == "demo":
            return demo.run(args)
        if args.command == "certs":
            return certs.run(args)
        return _simulate(args)
    except ConfigError as exc:
        print(f"gemini-breaker: configuration error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gemini-breaker", description="Sidecar proxy for the Google Gemini API."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", help="YAML configuration file (default: $GEMINI_BREAKER_CONFIG)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8080)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--workers", type=int, help="worker processes (several need a shared Redis)")

    simulate = commands.add_parser("simulate", help="run the Gemini simulator (a fake upstream)")
    simulate.add_argument("--config", help="YAML file with models, faults and quotas")
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=int, default=8090)
    simulate.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], default="info"
    )
    simulate.add_argument("--tls-cert", help="PEM certificate: serve HTTPS (with --tls-key)")
    simulate.add_argument("--tls-key", help="PEM private key of --tls-cert")
    admin_cli.add_parser(commands)
    demo.add_parser(commands)
    certs.add_parser(commands)
    return parser


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app, tune_collector

    server: dict[str, Any] = {
        key: value
        for key, value in (
            ("host", args.host),
            ("port", args.port),
            ("log_level", args.log_level),
            ("workers", args.workers),
        )
        if value is not None
    }
    raw = load_raw(args.config, overrides={"server": server} if server else None)
    settings = build_settings(raw)
    configure_logging(settings.server.log_level, settings.server.log_format)
    common: dict[str, Any] = {
        "host": settings.server.host,
        "port": settings.server.port,
        "log_config": None,
        "access_log": False,  # uvicorn's access log would print ?key= query strings
        # Answers carry the upstream's own server and date headers; uvicorn's would repeat
        # them (the proxy dates the answers it writes itself).
        "server_header": False,
        "date_header": False,
        # Explicit, so a missing one is an error rather than a silent fallback to the slow
        # pure-Python loop and parser (they roughly double the throughput).
        "loop": "auto" if sys.platform == "win32" else "uvloop",
        "http": "httptools",
        # Live API sessions (WebSocket) on the same library as the upstream side; frames are
        # relayed as they are, so compressing them again per hop buys memory and CPU only.
        "ws": "websockets-sansio",
        "ws_per_message_deflate": False,
        "ssl_certfile": settings.server.tls.cert_file,
        "ssl_keyfile": settings.server.tls.key_file,
    }
    if settings.server.workers == 1:
        app = create_app(settings)
        tune_collector()  # worker processes do the same in create_app_from_environment
        uvicorn.run(app, **common)
        return 0
    # Each worker process is a replica of the cluster; they share state through Redis.
    os.environ[SETTINGS_JSON_ENV] = json.dumps(raw)
    uvicorn.run(
        "proxy.app:create_app_from_environment",
        factory=True,
        workers=settings.server.workers,
        **common,
    )
    return 0


def _simulate(args: argparse.Namespace) -> int:
    import uvicorn

    from .simulator import create_simulator_app, load_simulator_config

    config = load_simulator_config(args.config)
    configure_logging(args.log_level)
    uvicorn.run(
        create_simulator_app(config),
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        # The simulator sends Google's front-end headers itself (``date`` and ``server`` too).
        server_header=False,
        date_header=False,
        # Faults like ``hang`` hold connections open forever; do not let them block a stop.
        timeout_graceful_shutdown=3,
        ssl_certfile=args.tls_cert,
        ssl_keyfile=args.tls_key,
    )
    return 0
