"""``gemini-breaker demo --quick`` runs end to end: simulator and proxy as subprocesses, an
outage that fails over and opens the primary's breaker, a 429 storm that the proxy sheds, and
a recovery."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_demo_shows_failover_shedding_and_recovery() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "demo", "--quick", "--port", "0", "--simulator-port", "0"],
        cwd=ROOT,
        env={**os.environ, "GEMINI_BREAKER_UPSTREAM_URL": "http://127.0.0.1:9"},  # ignored
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert re.search(r"status page\s+http://127\.0\.0\.1:\d+/admin/status", out)
    assert re.search(r"metrics\s+http://127\.0\.0\.1:\d+/metrics", out)
    # The outage: requests for pro were served by a fallback and pro's breaker opened.
    failover = re.search(
        r"failover: (\d+) requests for gemini-2\.5-pro were served by a fallback", out
    )
    assert failover and int(failover.group(1)) > 0, out
    assert "gemini-2.5-pro's breaker is open" in out
    assert "served gemini-2.5-flash" in out
    # The storm: the proxy shed requests itself.
    shed = re.search(r"shedding: the proxy answered (\d+) requests with 429 itself", out)
    assert shed and int(shed.group(1)) > 0, out
    summary = re.search(r"summary: requests=(\d+) failovers=(\d+) sheds=(\d+) recovered=(\w+)", out)
    assert summary, out
    requests, failovers, sheds, _ = summary.groups()
    assert int(requests) > 0 and int(failovers) > 0 and int(sheds) > 0
