"""Google's error answers, with the messages and details the real API sends."""

from __future__ import annotations

import math
from typing import Any

from proxy.simulator.wire import Reply, error_reply, format_duration

NO_KEY_MESSAGE = (
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API."
)
KEY_AND_TOKEN_MESSAGE = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
    "cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
INVALID_KEY_MESSAGE = "API key not valid. Please pass a valid API key."
QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits."
)
PREFILL_MESSAGE = (
    "Please ensure that multiturn requests end with a user role or a function response."
)
RATE_LIMITS_URL = "https://ai.google.dev/gemini-api/docs/rate-limits"

DEFAULT_MESSAGES: dict[int, str] = {
    400: "Request contains an invalid argument.",
    401: KEY_AND_TOKEN_MESSAGE,
    403: "The caller does not have permission",
    404: "Requested entity was not found.",
    409: "The operation was aborted.",
    429: "Resource has been exhausted (e.g. check quota).",
    499: "The operation was cancelled.",
    500: (
        "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting"
    ),
    501: "Operation is not implemented, or supported, or enabled.",
    502: "The service is currently unavailable.",
    503: "The model is overloaded. Please try again later.",
    504: "Deadline expired before operation could complete.",
}


def error_message(status: int, message: str | None = None) -> str:
    """``message``, else Google's usual message for that status."""
    if message:
        return message
    if status in DEFAULT_MESSAGES:
        return DEFAULT_MESSAGES[status]
    return "An internal error has occurred." if status >= 500 else DEFAULT_MESSAGES[400]


def fault_error(status: int, message: str | None) -> Reply:
    """The answer of an ``error`` fault."""
    return error_reply(status, error_message(status, message))


def not_found() -> Reply:
    return error_reply(404, DEFAULT_MESSAGES[404])


def model_not_found(model: str, version: str, method: str) -> Reply:
    return error_reply(
        404,
        f"models/{model} is not found for API version {version}, or is not supported for "
        f"{method}. Call ListModels to see the list of available models and their supported "
        "methods.",
    )


def invalid_argument(message: str) -> Reply:
    return error_reply(400, message)


def invalid_json() -> Reply:
    return error_reply(400, "Invalid JSON payload received. Unexpected token.")


def payload_too_large(limit: int) -> Reply:
    return error_reply(400, f"Request payload size exceeds the limit: {limit} bytes.")


def no_credentials() -> Reply:
    return error_reply(403, NO_KEY_MESSAGE)


def key_and_token() -> Reply:
    return error_reply(401, KEY_AND_TOKEN_MESSAGE)


def invalid_key() -> Reply:
    details: list[dict[str, Any]] = [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"},
        },
        {
            "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
            "locale": "en-US",
            "message": INVALID_KEY_MESSAGE,
        },
    ]
    return error_reply(400, INVALID_KEY_MESSAGE, details=details)


def input_too_long(count: int, limit: int) -> Reply:
    return error_reply(
        400,
        f"The input token count ({count}) exceeds the maximum number of tokens allowed ({limit}).",
    )


def rate_limited(
    model: str,
    *,
    per: str,
    retry_delay: float,
    retry_info: bool = True,
    quota_value: int | None = None,
    retry_after_header: bool = False,
    message: str | None = None,
) -> Reply:
    """A 429 with QuotaFailure, Help and (with ``retry_info``) RetryInfo; no Retry-After
    header unless asked, as Google sends none."""
    period = "Minute" if per == "minute" else "Day"
    violation: dict[str, Any] = {
        "quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
        "quotaId": f"GenerateRequestsPer{period}PerProjectPerModel",
        "quotaDimensions": {"location": "global", "model": model},
    }
    if quota_value is not None:
        violation["quotaValue"] = str(quota_value)
    details: list[dict[str, Any]] = [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [violation]},
        {
            "@type": "type.googleapis.com/google.rpc.Help",
            "links": [
                {"description": "Learn more about Gemini API quotas", "url": RATE_LIMITS_URL}
            ],
        },
    ]
    text = message or QUOTA_MESSAGE
    headers: tuple[tuple[str, str], ...] = ()
    if retry_info:
        delay = format_duration(retry_delay)
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay})
        if message is None:
            text = f"{text} Please retry in {delay}."
    if retry_after_header:
        headers = (("retry-after", str(math.ceil(retry_delay))),)
    return error_reply(429, text, details=details, headers=headers)
