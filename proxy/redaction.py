"""API keys must never reach a log: the pattern every log formatter blanks."""

from __future__ import annotations

import re

# ``key=`` in any URL, however a library chose to log it.
KEY_IN_URL = re.compile(r"([?&;]key=)[^&\s\"'>]+", re.IGNORECASE)
