"""``pageSize`` / ``pageToken`` pagination for list calls."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import TypeVar

from proxy.errors import SimulatorError

T = TypeVar("T")


class PageError(SimulatorError, ValueError):
    """A bad ``pageSize`` or ``pageToken``; the message is the 400's text."""


def paginate(
    items: Sequence[T],
    page_size: str | None,
    page_token: str | None,
    *,
    default: int,
    maximum: int,
) -> tuple[Sequence[T], str | None]:
    """One page of ``items`` and the token for the next (None on the last page).

    Like Google, a missing or zero size means ``default`` and a larger one is capped.
    """
    try:
        size = int(page_size) if page_size else 0
    except ValueError:
        raise PageError(f"Invalid value for pageSize: {page_size!r}") from None
    if size < 0:
        raise PageError("pageSize must not be negative.")
    size = min(size or default, maximum)
    start = 0
    if page_token:
        try:
            start = int(base64.urlsafe_b64decode(page_token.encode()).decode().removeprefix("o:"))
        except ValueError:
            raise PageError("Invalid page token.") from None
        if not 0 <= start <= len(items):
            raise PageError("Invalid page token.")
    end = start + size
    next_token = None
    if end < len(items):
        next_token = base64.urlsafe_b64encode(f"o:{end}".encode()).decode()
    return items[start:end], next_token
