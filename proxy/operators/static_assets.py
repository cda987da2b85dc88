"""The status page's vendored files (uPlot, MIT licence, with its LICENSE), served by the proxy
itself under ``/admin/static/``: a sidecar often has no way out to a CDN.

The files are library code and hold no data, so they are served as the page is: without the
token when one is configured (the browser loads them before the operator types it), and
otherwise under the admin API's rule. The page names the script with its SHA-384 (Subresource
Integrity), and the Content-Security-Policy admits exactly that hash.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

from .admin_auth import AdminAuth, refuse

PREFIX = "/admin/static/"
#: Served files: path under ``proxy/operators/static/`` -> content type.
FILES: Mapping[str, str] = {
    "uplot/uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uplot/uPlot.min.css": "text/css; charset=utf-8",
    "uplot/LICENSE": "text/plain; charset=utf-8",
}
SCRIPT = "uplot/uPlot.iife.min.js"
STYLESHEET = "uplot/uPlot.min.css"


@dataclass(frozen=True, slots=True)
class Assets:
    """The vendored files, read once when the app is built."""

    files: Mapping[str, bytes]

    def integrity(self, name: str) -> str:
        """The ``sha384-...`` of a file, for an ``integrity`` attribute and the CSP."""
        digest = hashlib.sha384(self.files[name]).digest()
        return "sha384-" + base64.b64encode(digest).decode()


def load_assets() -> Assets:
    folder = resources.files(__package__).joinpath("static")
    return Assets({name: folder.joinpath(name).read_bytes() for name in FILES})


def static_endpoint(auth: AdminAuth, assets: Assets) -> Callable[[Request], Awaitable[Response]]:
    """Serves ``/admin/static/{name}`` (the files of ``FILES`` only)."""

    async def endpoint(request: Request) -> Response:
        name = request.url.path.removeprefix(PREFIX)
        body = assets.files.get(name)
        if auth.mode != "token" or body is None:
            refused = auth.check(request)  # an unknown name: nothing learnt without the token
            if refused is not None:
                return refused
        if body is None:
            return refuse(404, f"No admin endpoint at {request.url.path}.")
        return Response(
            body,
            media_type=FILES[name],
            headers={"cache-control": "max-age=3600", "x-content-type-options": "nosniff"},
        )

    return endpoint
