"""The documentation site: it builds with --strict, and its configuration reference holds
every key of the settings with its default, so a new key cannot go undocumented."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from proxy.config import DEFAULT_ROUTES, Settings
from proxy.config_load import ENV_OVERRIDES, build_settings

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
REFERENCE = DOCS / "configuration.md"
# Settings fields that hold user-named entries rather than keys with defaults.
NAMED_ENTRIES = {"models", "routes", "stream_break"}


def leaf_keys(value: Any, prefix: str = "") -> Iterator[str]:
    """Dotted paths of every setting below a settings dataclass (or a parsed YAML mapping)."""
    if dataclasses.is_dataclass(value):
        items: Mapping[str, Any] = {
            f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.init
        }
    elif isinstance(value, Mapping):
        items = value
    else:
        yield prefix
        return
    for name, child in items.items():
        if not prefix and name in NAMED_ENTRIES:
            continue
        yield from leaf_keys(child, f"{prefix}.{name}" if prefix else name)


def reference_sample() -> dict[str, Any]:
    """The YAML block under the reference's "Every key, with its default" heading."""
    text = REFERENCE.read_text(encoding="utf-8")
    section = text.split("## Every key, with its default", 1)[1]
    match = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert match is not None, "the reference lost its YAML sample"
    sample = yaml.safe_load(match.group(1))
    assert isinstance(sample, dict)
    return sample


def test_the_site_builds_without_a_warning(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    assert (tmp_path / "configuration" / "index.html").is_file()
    assert (tmp_path / "images" / "status-page.png").is_file()


def test_the_reference_sample_holds_every_key_at_its_default() -> None:
    sample = reference_sample()
    defaults = Settings()
    assert sorted(leaf_keys(sample)) == sorted(leaf_keys(defaults))
    loaded = build_settings(sample)
    for section in (f.name for f in dataclasses.fields(Settings) if f.init):
        if section not in NAMED_ENTRIES:
            assert getattr(loaded, section) == getattr(defaults, section), section
    assert dict(loaded.routes) == {route: tuple(chain) for route, chain in DEFAULT_ROUTES.items()}


def test_the_reference_tables_name_every_key_and_variable() -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    rows = "\n".join(line for line in text.splitlines() if line.startswith("| `"))
    missing = [key for key in leaf_keys(Settings()) if f"`{key}`" not in rows]
    assert missing == []
    assert [var for var in ENV_OVERRIDES if f"`{var}`" not in text] == []


def test_the_readmes_point_at_pages_that_exist() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "](docs/" in readme, "the README should say where to read on"
    broken = [
        f"{path.relative_to(ROOT)}: {link}"
        for path in (ROOT / "README.md", ROOT / "deploy" / "README.md", ROOT / "helm" / "README.md")
        for link in re.findall(r"\]\(([^):#]+\.md)(?:#[^)]*)?\)", path.read_text(encoding="utf-8"))
        if not (path.parent / link).is_file()
    ]
    assert broken == []


def test_the_product_docs_speak_of_the_product_only() -> None:
    """No issue numbers or development history in what users read."""
    pages = [ROOT / "README.md", *DOCS.rglob("*.md")]
    pattern = re.compile(r"\bissues? \d+|\bround \d\b|\bcommit [0-9a-f]{7}", re.IGNORECASE)
    found = [
        f"{page.relative_to(ROOT)}: {match.group(0)}"
        for page in pages
        for match in pattern.finditer(page.read_text(encoding="utf-8"))
    ]
    assert found == []


def test_the_docs_name_only_paths_that_exist() -> None:
    """A module that moves takes its mentions in the docs along."""
    pages = [ROOT / "README.md", *DOCS.rglob("*.md")]
    named = {
        path
        for page in pages
        for path in re.findall(r"`((?:proxy|tests|bench|deploy|helm)/[\w/.-]*)`", page.read_text())
    }
    assert named, "the docs should say where things are"
    assert sorted(path for path in named if not (ROOT / path).exists()) == []
