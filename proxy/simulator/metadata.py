"""A fake GCE/GKE metadata server, enough for google-auth's Application Default Credentials
(point ``GCE_METADATA_HOST`` and ``GCE_METADATA_IP`` at it): the detection ping, the project
id, the default service account and its access tokens, numbered ``metadata-token-1``, ``-2``...

It is also Google's OAuth token endpoint for service-account files (their ``token_uri``
pointed at ``/token``): a JWT-bearer grant whose assertion is an RS256 JWT signed by the key of
a service account it knows (``TokenIssuer.service_accounts``), issued by that account's email,
for Google's token endpoint (or this one), gets ``sa-token-1``, ``-2``...; anything else gets
400 ``invalid_grant``.

``/_control`` reads how many tokens were issued and sets the lifetime of the next ones."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import google.auth.exceptions
from google.auth import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

FLAVOR = {"Metadata-Flavor": "Google"}
ACCOUNT = "proxy@test-project.iam.gserviceaccount.com"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_TOKEN_ENDPOINT = "https://oauth2.googleapis.com/token"
"""The audience google-auth's grants name, whatever the file's ``token_uri``."""
HOLD_TIMEOUT = 30.0
"""The longest a held token request waits to be released."""


@dataclass
class TokenIssuer:
    project: str = "test-project"
    expires_in: int = 3600
    issued: int = 0
    service_accounts: dict[str, str] = field(default_factory=dict)
    """Email of each service account the token endpoint knows, to its public key (PEM)."""
    rejected: int = 0
    """Token requests answered ``invalid_grant``."""
    waiting: int = 0
    """Token requests being held (``hold``)."""
    hold: threading.Event | None = None
    """When set, token requests wait until this event is (the tests' view of a slow fetch)."""


def create_metadata_app(issuer: TokenIssuer | None = None) -> Starlette:
    tokens = issuer or TokenIssuer()

    def flavored(request: Request) -> bool:
        return request.headers.get("metadata-flavor") == "Google"

    async def root(request: Request) -> Response:
        return PlainTextResponse("", headers=FLAVOR)

    async def project_id(request: Request) -> Response:
        if not flavored(request):
            return PlainTextResponse("Missing Metadata-Flavor header", 403)
        return PlainTextResponse(tokens.project, headers=FLAVOR)

    async def account(request: Request) -> Response:
        if not flavored(request):
            return PlainTextResponse("Missing Metadata-Flavor header", 403)
        body = {"email": ACCOUNT, "aliases": ["default"], "scopes": ["cloud-platform"]}
        return JSONResponse(body, headers=FLAVOR)

    async def email(request: Request) -> Response:
        return PlainTextResponse(ACCOUNT, headers=FLAVOR)

    async def token(request: Request) -> Response:
        if not flavored(request):
            return PlainTextResponse("Missing Metadata-Flavor header", 403)
        tokens.issued += 1
        body = {
            "access_token": f"metadata-token-{tokens.issued}",
            "expires_in": tokens.expires_in,
            "token_type": "Bearer",
        }
        return JSONResponse(body, headers=FLAVOR)

    async def oauth_token(request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode("latin-1")))
        assertion = form.get("assertion")
        if form.get("grant_type") != JWT_BEARER or assertion is None:
            return _invalid_grant(tokens, "Only JWT-bearer grants are accepted.")
        problem = _check_assertion(assertion, str(request.url), tokens.service_accounts)
        if problem is not None:
            return _invalid_grant(tokens, problem)
        if tokens.hold is not None:
            tokens.waiting += 1
            try:
                await asyncio.to_thread(tokens.hold.wait, HOLD_TIMEOUT)
            finally:
                tokens.waiting -= 1
        tokens.issued += 1
        body = {
            "access_token": f"sa-token-{tokens.issued}",
            "expires_in": tokens.expires_in,
            "token_type": "Bearer",
        }
        return JSONResponse(body, headers={"cache-control": "no-store"})

    async def control(request: Request) -> Response:
        if request.method == "PUT":
            tokens.expires_in = int((await request.json())["expires_in"])
        return JSONResponse(
            {"issued": tokens.issued, "expires_in": tokens.expires_in, "rejected": tokens.rejected}
        )

    prefix = "/computeMetadata/v1"
    return Starlette(
        routes=[
            Route("/", root),
            Route(f"{prefix}/project/project-id", project_id),
            Route(f"{prefix}/instance/service-accounts/{{account}}/", account),
            Route(f"{prefix}/instance/service-accounts/{{account}}/email", email),
            Route(f"{prefix}/instance/service-accounts/{{account}}/token", token),
            Route("/token", oauth_token, methods=["POST"]),
            Route("/_control", control, methods=["GET", "PUT"]),
        ]
    )


def _invalid_grant(tokens: TokenIssuer, description: str) -> Response:
    tokens.rejected += 1
    return JSONResponse({"error": "invalid_grant", "error_description": description}, 400)


def _check_assertion(assertion: str, audience: str, accounts: dict[str, str]) -> str | None:
    """Why the assertion is refused; None when it is an RS256 JWT for ``audience`` (or Google's
    token endpoint) signed by the key of the account that issued it."""
    parts = assertion.split(".")
    if len(parts) != 3:
        return "The assertion is not a JWT."
    try:
        header, claims = (_segment(part) for part in parts[:2])
    except ValueError:
        return "The assertion is not a JWT."
    if header.get("alg") != "RS256":
        return "The assertion is not signed with RS256."
    key = accounts.get(str(claims.get("iss")))
    if key is None:
        return "The assertion's issuer is no known service account."
    try:
        # google-auth's own check: the signature with the key, the audience, iat and exp.
        jwt.decode(  # type: ignore[no-untyped-call]
            assertion, certs=[key], audience=[audience, GOOGLE_TOKEN_ENDPOINT]
        )
    except (ValueError, google.auth.exceptions.GoogleAuthError) as exc:
        return f"Invalid JWT: {exc}"
    if "https://www.googleapis.com/auth/cloud-platform" not in str(claims.get("scope", "")):
        return "The assertion asks for no cloud-platform scope."
    return None


def _segment(part: str) -> dict[str, Any]:
    try:
        value = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value
