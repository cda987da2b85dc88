"""The Python >= 3.12 environment in which tests/helm_render.py runs Helm (helm-sdkpy).

helm-sdkpy bundles Helm 4 as a library but needs Python >= 3.12, while the project runs on
3.11. ``ensure()`` finds such an interpreter (on PATH or under pyenv) and keeps a virtual
environment with helm-sdkpy in .venv/helm-py312, created on first use.
``python -m tests.helm_env`` (``make helm-env``) prepares it ahead of the tests.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv" / "helm-py312"
HELM_SDKPY = "helm-sdkpy==0.1.32"


class HelmUnavailable(Exception):
    """No interpreter for helm-sdkpy here, or it could not be installed."""


def find_python() -> str | None:
    """An interpreter >= 3.12: on PATH, or under pyenv."""
    candidates = [shutil.which(name) for name in ("python3.13", "python3.12", "python3")]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates += sorted(glob.glob(str(pyenv / "3.1[2-9]*" / "bin" / "python")), reverse=True)
    for candidate in filter(None, candidates):
        try:
            check = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info >= (3, 12))"],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if check.stdout.strip() == "True":
            return candidate
    return None


def ensure() -> Path:
    """The environment's interpreter, with helm-sdkpy installed."""
    python = VENV / "bin" / "python"
    stamp = VENV / f".installed-{HELM_SDKPY}"
    if stamp.exists():
        return python
    base = find_python()
    if base is None:
        raise HelmUnavailable("no Python >= 3.12 found (helm-sdkpy, the Helm engine, needs one)")
    for step in (
        [base, "-m", "venv", "--clear", str(VENV)],
        [str(python), "-m", "pip", "install", "--quiet", HELM_SDKPY],
    ):
        result = subprocess.run(step, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            tail = result.stderr.strip()[-500:]
            raise HelmUnavailable(f"cannot prepare {VENV} with {HELM_SDKPY}: {tail}")
    stamp.touch()
    return python


if __name__ == "__main__":
    try:
        print(ensure())
    except HelmUnavailable as exc:
        print(f"helm-env: {exc}; tests/test_helm_chart.py will skip", file=sys.stderr)
