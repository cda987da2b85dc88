"""A fake GCE/GKE metadata server, enough for google-auth's Application Default Credentials
(point ``GCE_METADATA_HOST`` and ``GCE_METADATA_IP`` at it): the detection ping, the project
id, the default service account and its access tokens, numbered ``metadata-token-1``, ``-2``...
``/_control`` reads how many tokens were issued and sets the lifetime of the next ones."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

FLAVOR = {"Metadata-Flavor": "Google"}
ACCOUNT = "proxy@test-project.iam.gserviceaccount.com"


@dataclass
class TokenIssuer:
    project: str = "test-project"
    expires_in: int = 3600
    issued: int = 0


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

    async def control(request: Request) -> Response:
        if request.method == "PUT":
            tokens.expires_in = int((await request.json())["expires_in"])
        return JSONResponse({"issued": tokens.issued, "expires_in": tokens.expires_in})

    prefix = "/computeMetadata/v1"
    return Starlette(
        routes=[
            Route("/", root),
            Route(f"{prefix}/project/project-id", project_id),
            Route(f"{prefix}/instance/service-accounts/{{account}}/", account),
            Route(f"{prefix}/instance/service-accounts/{{account}}/email", email),
            Route(f"{prefix}/instance/service-accounts/{{account}}/token", token),
            Route("/_control", control, methods=["GET", "PUT"]),
        ]
    )
