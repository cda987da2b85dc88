"""The Gemini API surface: routing with ``parse_path``, credentials, and every supported call.

Order of checks for a model call: path, credentials, model and method, body (a trailing model
turn included, for a model without ``supports_prefill``), the model's input limit, the rate
quota (only admitted requests take a slot), then the installed faults.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from proxy.gemini.errors import JSON_CONTENT_TYPE, error_payload, sse_error_event
from proxy.gemini.paths import GeminiPath, parse_path
from proxy.simulator import content, replies
from proxy.simulator.attempts import key_digest
from proxy.simulator.catalogue import ModelSpec
from proxy.simulator.config import API_METHODS, GENERATE_METHODS, STREAM_ONLY_KINDS, FaultSpec
from proxy.simulator.content import Answer, RequestError
from proxy.simulator.exchange import Exchange
from proxy.simulator.faults import RequestTraits, Selection
from proxy.simulator.files import MAX_FILE_BYTES
from proxy.simulator.paging import PageError, paginate
from proxy.simulator.state import SimulatorState
from proxy.simulator.vertex import (
    is_vertex,
    vertex_error_message,
    vertex_model_not_found,
    vertex_parent,
    vertex_path,
    vertex_quota_exceeded,
)
from proxy.simulator.vertex_jobs import FAMILIES
from proxy.simulator.vertex_methods import (
    VERTEX_ONLY_METHODS,
    compute_tokens,
    predict_embeddings,
)
from proxy.simulator.wire import (
    SSE_CONTENT_TYPE,
    Reply,
    error_reply,
    json_reply,
    pretty_json,
    sse_event,
)

COMPATIBLE_BODY = "gemini_simulator.compatible_body"
"""The scope key under which the OpenAI-compatible endpoint hands over its client's body."""
# Room for a full 64 MiB upload chunk plus headers' worth of slack.
MAX_REQUEST_BYTES = MAX_FILE_BYTES + 1024 * 1024
_KEY_PARAM = re.compile(r"(^|&)key=[^&]*")
# What a stream sends for a ``malformed`` fault: the start of a chunk, cut inside a string.
_MALFORMED_JSON = b'{"candidates": [{"content": {"parts": [{"text": "unterminated'
_ID = re.compile(r"^[A-Za-z0-9_-]+$")
# Faults that still answer 200 with the whole answer: changed text, or another last event.
_ANSWERING_KINDS = frozenset({"json_drift", "empty_final_chunk"})


@dataclass(frozen=True, slots=True)
class Call:
    """A Gemini request, parsed."""

    method: str
    path: GeminiPath
    query: dict[str, str]
    headers: Headers
    body: bytes
    scope: Scope


Handler = Callable[[Exchange, Call, str], Awaitable[None]]


class GeminiApi:
    """ASGI endpoint for every path that is not the control API."""

    def __init__(self, state: SimulatorState) -> None:
        self.state = state
        self._collections: dict[tuple[str, str], tuple[str, Handler]] = {
            ("GET", "models"): ("models.list", self._list_models),
            ("GET", "tunedModels"): ("tunedModels.list", self._list_tuned_models),
            ("GET", "files"): ("files.list", self._list_files),
            ("GET", "cachedContents"): ("cachedContents.list", self._list_caches),
            ("POST", "cachedContents"): ("cachedContents.create", self._create_cache),
        }
        self._items: dict[tuple[str, str], tuple[str, Handler]] = {
            ("GET", "files"): ("files.get", self._get_file),
            ("DELETE", "files"): ("files.delete", self._delete_file),
            ("GET", "cachedContents"): ("cachedContents.get", self._get_cache),
            ("PATCH", "cachedContents"): ("cachedContents.patch", self._patch_cache),
            ("DELETE", "cachedContents"): ("cachedContents.delete", self._delete_cache),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self.state
        raw_path: bytes | None = scope.get("raw_path")
        path_text = raw_path.decode("latin-1") if raw_path else scope["path"]
        query_string: str = scope.get("query_string", b"").decode("latin-1")
        gemini_path = vertex_path(path_text) or parse_path(path_text)
        attempt = state.attempts.begin(
            wall=state.wall_clock(),
            mono=state.clock(),
            method=scope["method"],
            path=path_text,
            query=_KEY_PARAM.sub(r"\1key=REDACTED", query_string),
            api_version=gemini_path.version if gemini_path else None,
        )
        exchange = Exchange(scope, receive, send, attempt)
        try:
            body = await exchange.read_body(MAX_REQUEST_BYTES)
            if body is None:
                await exchange.reply(replies.payload_too_large(MAX_REQUEST_BYTES))
                return
            # A compatible-API call is logged with the body its client sent.
            state.attempts.set_body(attempt, scope.get(COMPATIBLE_BODY, body))
            if exchange.client_gone:
                return
            if gemini_path is None:
                await exchange.reply(replies.not_found())
                return
            query = dict(parse_qsl(query_string, keep_blank_values=True))
            call = Call(scope["method"], gemini_path, query, Headers(scope=scope), body, scope)
            attempt.model = gemini_path.model
            await self._route(exchange, call)
        finally:
            await exchange.close()

    async def _route(self, ex: Exchange, call: Call) -> None:
        if call.path.upload:
            await self._upload(ex, call)
            return
        if is_vertex(ex.attempt.path) and call.path.resource.partition("/")[0] in FAMILIES:
            await self._vertex_job(ex, call)
            return
        resolved = self._resolve(call)
        if resolved is None:
            await ex.reply(replies.not_found())
            return
        ex.attempt.api_method, handler = resolved
        identity = self._authenticate(ex, call)
        if isinstance(identity, Reply):
            await ex.reply(identity)
            return
        await handler(ex, call, identity)

    async def _vertex_job(self, ex: Exchange, call: Call) -> None:
        ex.attempt.api_method = f"{call.path.resource.partition('/')[0]}.{call.method.lower()}"
        identity = self._authenticate(ex, call)
        if isinstance(identity, Reply):
            await ex.reply(identity)
            return
        try:
            body = _json_object(call.body)
        except ValueError:
            await ex.reply(replies.invalid_json())
            return
        parent = vertex_parent(ex.attempt.path)
        now = self.state.wall_clock()
        reply = self.state.jobs.answer(call.method, parent, call.path.resource, body, now)
        await ex.reply(reply or replies.not_found())

    def _resolve(self, call: Call) -> tuple[str, Handler] | None:
        """The API method name and handler for a path and HTTP method."""
        gp, verb = call.path, call.method
        if gp.model is not None:
            if gp.method is None:
                return ("models.get", self._get_model) if verb == "GET" else None
            return (gp.method, self._model_call) if verb == "POST" else None
        if (verb, gp.resource) in self._collections:
            return self._collections[(verb, gp.resource)]
        collection, _, item = gp.resource.partition("/")
        if not _ID.match(item):
            return None
        return self._items.get((verb, collection))

    def _authenticate(self, ex: Exchange, call: Call) -> str | Reply:
        """The caller's identity (a digest of its key or token), or the error Google gives."""
        key = call.headers.get("x-goog-api-key") or call.query.get("key")
        authorization = call.headers.get("authorization")
        if key:
            ex.attempt.key_digest = key_digest(key)
            if authorization:
                # Google rejects a request that carries both an API key and a token.
                return replies.key_and_token()
            allowed = self.state.config.api_keys
            if allowed is not None and key not in allowed:
                return replies.invalid_key()
            return ex.attempt.key_digest
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                ex.attempt.key_digest = key_digest(token.strip())
                return ex.attempt.key_digest
            return replies.key_and_token()
        return replies.no_credentials()

    # Models -------------------------------------------------------------------------------

    async def _list_models(self, ex: Exchange, call: Call, identity: str) -> None:
        models = list(self.state.catalogue.values())
        try:
            page, token = paginate(
                models,
                call.query.get("pageSize"),
                call.query.get("pageToken"),
                default=50,
                maximum=1000,
            )
        except PageError as exc:
            await ex.reply(replies.invalid_argument(str(exc)))
            return
        body: dict[str, Any] = {"models": [spec.to_json() for spec in page]}
        if token:
            body["nextPageToken"] = token
        await ex.reply(json_reply(body))

    async def _get_model(self, ex: Exchange, call: Call, identity: str) -> None:
        model = call.path.model or ""
        spec = self.state.catalogue.get(model)
        if spec is None:
            await ex.reply(replies.model_not_found(model, call.path.version, "get"))
            return
        await ex.reply(json_reply(spec.to_json()))

    async def _list_tuned_models(self, ex: Exchange, call: Call, identity: str) -> None:
        await ex.reply(json_reply({}))

    async def _model_call(self, ex: Exchange, call: Call, identity: str) -> None:
        state = self.state
        model, verb, version = call.path.model or "", call.path.method or "", call.path.version
        stream = verb == "streamGenerateContent"
        mode = ("sse" if call.query.get("alt") == "sse" else "array") if stream else "unary"
        ex.attempt.stream = stream
        spec = state.catalogue.get(model)
        vertex_only = verb in VERTEX_ONLY_METHODS and not is_vertex(ex.attempt.path)
        if spec is None or verb not in API_METHODS or not spec.supports(verb) or vertex_only:
            reply = vertex_model_not_found(ex.attempt.path) or replies.model_not_found(
                model, version, verb
            )
            await self._fail(ex, mode, reply)
            return
        try:
            body = _json_object(call.body)
        except ValueError:
            await self._fail(ex, mode, replies.invalid_json())
            return
        try:
            outcome: Answer | Reply = self._compute(model, verb, body, spec)
        except RequestError as exc:
            await self._fail(ex, mode, replies.invalid_argument(str(exc)))
            return
        if isinstance(outcome, Answer) and outcome.prompt_tokens > spec.input_token_limit:
            reply = replies.input_too_long(outcome.prompt_tokens, spec.input_token_limit)
            await self._fail(ex, mode, reply)
            return
        now = state.clock()
        rejection = state.quotas.admit(identity, model, verb, now)
        if rejection is not None:
            ex.attempt.fault = "quota"
            if is_vertex(ex.attempt.path):
                retry_after = rejection.retry_delay if rejection.spec.retry_after_header else None
                reply = vertex_quota_exceeded(model, rejection.spec.per, retry_after=retry_after)
            else:
                reply = replies.rate_limited(
                    model,
                    per=rejection.spec.per,
                    retry_delay=rejection.retry_delay,
                    quota_value=rejection.spec.limit,
                    retry_after_header=rejection.spec.retry_after_header,
                )
            await self._fail(ex, mode, reply)
            return
        if isinstance(outcome, Answer) and content.poisoned(body.get("contents") or ()):
            ex.attempt.fault = "poison"
            await self._fail(ex, mode, _fault_error(ex, 500, None))
            return
        traits = RequestTraits(stream=stream)
        if isinstance(outcome, Answer):
            traits = RequestTraits(stream, outcome.continuation, outcome.json_mode)
        selection = state.faults.select(model, verb, traits, now)
        ex.attempt.fault = selection.name
        ex.attempt.faults = selection.applied
        drift = selection.terminal
        if drift is not None and drift.kind == "json_drift" and isinstance(outcome, Answer):
            outcome = content.answer(model, body, spec.output_token_limit, drift.mode)
        await self._perform(ex, mode, selection, outcome, spec.input_token_limit)

    def _compute(
        self, model: str, verb: str, body: dict[str, Any], spec: ModelSpec
    ) -> Answer | Reply:
        """The healthy answer: an ``Answer`` for generate calls, a ready reply otherwise."""
        if verb in GENERATE_METHODS:
            contents = content.check_contents(
                body.get("contents"), "GenerateContentRequest.contents"
            )
            if not spec.supports_prefill and content.prefill(contents) is not None:
                raise RequestError(replies.PREFILL_MESSAGE)
            return content.answer(model, body, spec.output_token_limit)
        if verb == "countTokens":
            request = body.get("generateContentRequest", body.get("generate_content_request"))
            if isinstance(request, dict):
                field = "CountTokensRequest.generate_content_request.contents"
                contents = content.check_contents(request.get("contents"), field)
                system = request.get("systemInstruction", request.get("system_instruction"))
            else:
                contents = content.check_contents(
                    body.get("contents"), "CountTokensRequest.contents"
                )
                system = None
            total = content.count_tokens(contents, system)
            details = [{"modality": "TEXT", "tokenCount": total}]
            return json_reply({"totalTokens": total, "promptTokensDetails": details})
        if verb == "embedContent":
            return json_reply({"embedding": _embed(body, model, "EmbedContentRequest")})
        if verb == "computeTokens":
            return json_reply(compute_tokens(body))
        if verb == "predict":
            return json_reply(predict_embeddings(body))
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            raise RequestError("* BatchEmbedContentsRequest.requests: requests is not specified\n")
        if len(requests) > content.MAX_BATCH_EMBED_REQUESTS:
            raise RequestError(
                f"* BatchEmbedContentsRequest.requests: at most "
                f"{content.MAX_BATCH_EMBED_REQUESTS} requests can be in one batch\n"
            )
        embeddings = [
            _embed(request, model, f"BatchEmbedContentsRequest.requests[{index}]")
            for index, request in enumerate(requests)
        ]
        return json_reply({"embeddings": embeddings})

    async def _perform(
        self,
        ex: Exchange,
        mode: str,
        selection: Selection,
        outcome: Answer | Reply,
        input_limit: int,
    ) -> None:
        """Answer under the selected faults."""
        if selection.latency and not await ex.pause(selection.latency):
            return
        fault = selection.terminal
        kind = fault.kind if fault is not None else None
        if kind == "hang":
            await ex.wait_for_disconnect()
            return
        if kind == "reset":
            await ex.abort()
            return
        if kind in _ANSWERING_KINDS:
            fault = None  # already in the answer (json_drift) or in how a stream ends
        if mode != "unary" and isinstance(outcome, Answer) and _streams(fault):
            final_without_parts = kind == "empty_final_chunk"
            await self._stream(ex, mode, selection, outcome, fault, final_without_parts)
            return
        generating = 0.0
        if fault is not None:
            reply = self._fault_reply(fault, outcome, input_limit, ex)
        elif isinstance(outcome, Answer):
            reply = json_reply(outcome.response())
            generating = self._generation_time(outcome)
        else:
            reply = outcome
        delay = selection.first_chunk_delay + generating
        if delay and not await ex.pause(delay):
            return
        await self._fail(ex, mode, reply)

    def _generation_time(self, answer: Answer) -> float:
        """A unary answer is sent whole once generated: after as long as its stream takes."""
        interval = self.state.config.chunk_interval
        if not interval:
            return 0.0
        return interval * (len(answer.chunks(self.state.config.chunk_words)) - 1)

    def _fault_reply(
        self, fault: FaultSpec, outcome: Answer | Reply, input_limit: int, ex: Exchange
    ) -> Reply:
        model = ex.attempt.model or ""
        if fault.kind == "error":
            return _fault_error(ex, fault.status, fault.message)
        if fault.kind == "rate_limited" and is_vertex(ex.attempt.path):
            retry_after = fault.retry_delay if fault.retry_after_header else None
            return vertex_quota_exceeded(model, fault.per, fault.message, retry_after)
        if fault.kind == "rate_limited":
            return replies.rate_limited(
                model,
                per=fault.per,
                retry_delay=fault.retry_delay,
                retry_info=fault.retry_info,
                retry_after_header=fault.retry_after_header,
                message=fault.message,
            )
        if fault.kind == "input_too_long":
            # Report a count over the limit, as the real error always does.
            prompt = outcome.prompt_tokens if isinstance(outcome, Answer) else 0
            return replies.input_too_long(max(prompt, input_limit + 1), input_limit)
        if fault.kind == "blocked" and isinstance(outcome, Answer):
            return json_reply(outcome.blocked(fault.block_reason))
        if fault.kind == "reject_continuation":
            return replies.invalid_argument(fault.message or replies.PREFILL_MESSAGE)
        raise AssertionError(f"fault {fault.kind} has no unary answer")

    async def _stream(
        self,
        ex: Exchange,
        mode: str,
        selection: Selection,
        answer: Answer,
        fault: FaultSpec | None,
        final_without_parts: bool = False,
    ) -> None:
        """A 200 stream, interrupted as the fault says.

        An interruption always comes before the chunk carrying ``finishReason`` (however large
        ``after_chunks`` is), so a cut stream is never mistaken for a complete one.
        """
        sse = mode == "sse"
        await ex.start(200, [("content-type", SSE_CONTENT_TYPE if sse else JSON_CONTENT_TYPE)])
        if selection.first_chunk_delay and not await ex.pause(selection.first_chunk_delay):
            return
        if fault is not None and fault.kind == "blocked":
            events = [answer.blocked(fault.block_reason)]
            fault = None
        else:
            words = self.state.config.chunk_words
            events = answer.chunks(words, final_without_parts=final_without_parts)
        count = len(events)
        if fault is not None:
            after = 1 if fault.after_chunks is None else fault.after_chunks
            count = max(0, min(after, len(events) - 1))
        interval = self.state.config.chunk_interval
        for index, event in enumerate(events[:count]):
            if index and interval and not await ex.pause(interval):
                return
            await ex.write(_frame(sse, event, first=index == 0))
        opener = b"" if sse or count else b"["
        if fault is None or (fault.kind == "cut" and not fault.abrupt):
            if fault is not None and fault.close:
                ex.close_before_next()
            await ex.write(b"" if sse else opener + b"]", more=False)
        elif fault.kind == "cut":
            await ex.abort()
        elif fault.kind == "stall":
            await ex.wait_for_disconnect()
        elif fault.kind == "malformed":
            # Then the body ends: a client sees one broken event and no finishReason.
            if sse:
                await ex.write(b"data: " + _MALFORMED_JSON + b"\r\n\r\n", more=False)
            else:
                await ex.write((opener or b",\r\n") + _MALFORMED_JSON, more=False)
        else:
            status = fault.status
            if is_vertex(ex.attempt.path):
                message = vertex_error_message(status, fault.message)
            else:
                message = replies.error_message(status, fault.message)
            if sse:
                await ex.write(sse_error_event(status, message), more=False)
            else:
                error = pretty_json(error_payload(status, message))
                await ex.write((opener or b",\r\n") + error + b"]", more=False)

    async def _fail(self, ex: Exchange, mode: str, reply: Reply) -> None:
        """Send a complete reply; the JSON-array stream wraps an error in a one-element array."""
        if mode == "array" and reply.status != 200:
            reply = Reply(reply.status, b"[" + reply.body + b"]", reply.content_type, reply.headers)
        await ex.reply(reply)

    # Files ---------------------------------------------------------------------------------

    async def _upload(self, ex: Exchange, call: Call) -> None:
        state = self.state
        if call.path.resource != "files" or call.method != "POST":
            await ex.reply(replies.not_found())
            return
        upload_id = call.query.get("upload_id")
        if upload_id is not None:
            # The follow-up requests carry no key: the unguessable upload_id is the credential.
            ex.attempt.api_method = "files.upload.chunk"
            command = call.headers.get("x-goog-upload-command", "")
            offset = call.headers.get("x-goog-upload-offset")
            now = state.wall_clock()
            await ex.reply(state.files.chunk(upload_id, command, offset, call.body, now))
            return
        ex.attempt.api_method = "files.upload"
        identity = self._authenticate(ex, call)
        if isinstance(identity, Reply):
            await ex.reply(identity)
            return
        protocol = call.headers.get("x-goog-upload-protocol", "").lower()
        command = call.headers.get("x-goog-upload-command", "").strip().lower()
        if protocol != "resumable" or command != "start":
            message = (
                "The simulator supports only resumable uploads (X-Goog-Upload-Command: start)."
            )
            await ex.reply(replies.invalid_argument(message))
            return
        try:
            body = _json_object(call.body)
        except ValueError:
            await ex.reply(replies.invalid_json())
            return
        # Built from the request itself, so the URL reaches this server from wherever the
        # caller is (a proxy in front rewrites it to its own origin).
        host = call.headers.get("host") or _server_netloc(call.scope)
        base = f"{call.scope.get('scheme', 'http')}://{host}{call.path.prefix}"
        reply = state.files.start(
            version=call.path.version,
            upload_url_base=f"{base}/upload/{call.path.version}/files",
            headers={k.lower(): v for k, v in call.headers.items()},
            body=body,
        )
        await ex.reply(reply)

    async def _list_files(self, ex: Exchange, call: Call, identity: str) -> None:
        q = call.query
        now = self.state.wall_clock()
        await ex.reply(self.state.files.list(q.get("pageSize"), q.get("pageToken"), now))

    async def _get_file(self, ex: Exchange, call: Call, identity: str) -> None:
        await ex.reply(self.state.files.get(_item(call), self.state.wall_clock()))

    async def _delete_file(self, ex: Exchange, call: Call, identity: str) -> None:
        await ex.reply(self.state.files.delete(_item(call), self.state.wall_clock()))

    # Cached contents -----------------------------------------------------------------------

    async def _list_caches(self, ex: Exchange, call: Call, identity: str) -> None:
        q = call.query
        now = self.state.wall_clock()
        await ex.reply(self.state.caches.list(q.get("pageSize"), q.get("pageToken"), now))

    async def _create_cache(self, ex: Exchange, call: Call, identity: str) -> None:
        try:
            body = _json_object(call.body)
        except ValueError:
            await ex.reply(replies.invalid_json())
            return
        known = self.state.catalogue.__contains__
        await ex.reply(self.state.caches.create(body, known, self.state.wall_clock()))

    async def _get_cache(self, ex: Exchange, call: Call, identity: str) -> None:
        await ex.reply(self.state.caches.get(_item(call), self.state.wall_clock()))

    async def _patch_cache(self, ex: Exchange, call: Call, identity: str) -> None:
        try:
            body = _json_object(call.body)
        except ValueError:
            await ex.reply(replies.invalid_json())
            return
        await ex.reply(self.state.caches.update(_item(call), body, self.state.wall_clock()))

    async def _delete_cache(self, ex: Exchange, call: Call, identity: str) -> None:
        await ex.reply(self.state.caches.delete(_item(call), self.state.wall_clock()))


def _streams(fault: FaultSpec | None) -> bool:
    """Whether a stream call under this fault starts a 200 stream (else it is a plain reply)."""
    if fault is None or fault.kind in STREAM_ONLY_KINDS or fault.kind == "blocked":
        return True
    return fault.kind == "error" and fault.after_chunks is not None


def _frame(sse: bool, event: dict[str, Any], *, first: bool) -> bytes:
    if sse:
        return sse_event(event)
    return (b"[" if first else b",\r\n") + pretty_json(event)


def _json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object (empty means ``{}``); ValueError when it is not one."""
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except RecursionError:  # nested deeper than the parser goes: Google says 400 too
        raise ValueError("nested too deeply") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _embed(request: Any, model: str, where: str) -> dict[str, Any]:
    if not isinstance(request, dict):
        raise RequestError(f"Invalid value at '{where}': expected an object.")
    named = request.get("model")
    if named is not None and named != f"models/{model}":
        raise RequestError(
            f"Model {named!r} in {where} does not match the model in the URL (models/{model})."
        )
    text = content.embed_text(request.get("content"), f"{where}.content")
    # Vertex AI nests the options in ``embedContentConfig``.
    config = request.get("embedContentConfig", request.get("embed_content_config"))
    options = config if isinstance(config, dict) else request
    return {"values": content.embedding(text, content.dimensions(options, where))}


def _item(call: Call) -> str:
    return call.path.resource.partition("/")[2]


def _server_netloc(scope: Scope) -> str:
    server = scope.get("server")
    if not server:
        return "localhost"
    host, port = server
    return f"{host}:{port}"


def _fault_error(ex: Exchange, status: int, message: str | None) -> Reply:
    """Google's error for ``status``, worded as the API the path belongs to words it."""
    if is_vertex(ex.attempt.path):
        return error_reply(status, vertex_error_message(status, message))
    return replies.fault_error(status, message)
