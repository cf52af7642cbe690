"""The workspace's packaging rules: every distribution versioned, documented, typed, with a console
script named after it, and sibling dependencies carrying ranges and workspace sources."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").exists())
NAMES = {p.name for p in PACKAGES}
NO_TORCH = ("llm-tokenizer", "llm-rag", "llm-agent", "llm-repl")
ORDER = [  # dependencies may only point down this list (ARCHITECTURE.md)
    "llm-kernels", "llm-core", "llm-tokenizer", "llm-quant", "llm-infer",
    "llm-serve", "llm-train", "llm-rag", "llm-agent", "llm-repl",
]  # fmt: skip


def _project(pkg: Path) -> dict:
    return tomllib.loads((pkg / "pyproject.toml").read_text())


def test_ten_distributions():
    assert sorted(NAMES) == sorted(ORDER)


@pytest.mark.parametrize("pkg", PACKAGES, ids=lambda p: p.name)
def test_package_layout(pkg):
    data = _project(pkg)
    name, module = pkg.name, pkg.name.replace("-", "_")
    assert data["project"]["name"] == name
    assert re.fullmatch(r"\d+\.\d+\.\d+", data["project"]["version"])
    assert data["project"]["scripts"] == {name: f"{module}.cli:main"}
    for f in (
        "README.md",
        "CHANGELOG.md",
        f"src/{module}/py.typed",
        f"src/{module}/__init__.py",
        f"src/{module}/cli.py",
    ):
        assert (pkg / f).is_file(), f"{name}: missing {f}"
    assert data["project"]["version"] in (pkg / "CHANGELOG.md").read_text()


@pytest.mark.parametrize("pkg", PACKAGES, ids=lambda p: p.name)
def test_sibling_dependencies(pkg):
    data = _project(pkg)
    sources = data.get("tool", {}).get("uv", {}).get("sources", {})
    for dep in data["project"].get("dependencies", []):
        dist = re.split(r"[\s<>=!~;\[]", dep)[0]
        if dist not in NAMES:
            continue
        assert re.search(r">=\s*[\d.]+\s*,\s*<\s*[\d.]+", dep), (
            f"{pkg.name}: {dep!r} needs a version range"
        )
        assert sources.get(dist) == {"workspace": True}, (
            f"{pkg.name}: {dist} needs a workspace source"
        )
        assert ORDER.index(dist) < ORDER.index(pkg.name), f"{pkg.name} may not depend on {dist}"
    if pkg.name in NO_TORCH:
        deps = " ".join(data["project"].get("dependencies", []))
        assert "torch" not in deps


@pytest.mark.parametrize("name", [n for n in NO_TORCH if n != "llm-tokenizer"])
def test_torch_free_packages_import_without_torch(name):
    module = name.replace("-", "_")
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("pkg", PACKAGES, ids=lambda p: p.name)
def test_console_script_version(pkg):
    module = pkg.name.replace("-", "_")
    code = f"import sys; from {module}.cli import main; sys.exit(main(['--version']))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith(_project(pkg)["project"]["version"])
