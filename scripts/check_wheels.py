"""Install each built wheel into a fresh venv, with only the wheels of its sibling dependencies,
and import it: proof that every package stands alone outside the workspace.

Usage: python scripts/check_wheels.py DIST_DIR
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


def wheel_requirements(wheel: Path) -> list[str]:
    """Names of the distributions a wheel requires (extras excluded)."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        lines = zf.read(meta).decode().splitlines()
    reqs = []
    for line in lines:
        if line.startswith("Requires-Dist:") and "extra ==" not in line:
            reqs.append(re.split(r"[\s<>=!~;\[(]", line.split(":", 1)[1].strip())[0].lower())
    return reqs


def main(dist: str) -> int:
    wheels = {re.sub(r"_", "-", w.name.split("-")[0]).lower(): w for w in Path(dist).glob("*.whl")}
    if len(wheels) < 10:
        print(f"check_wheels: expected 10 wheels in {dist}, found {len(wheels)}", file=sys.stderr)
        return 1
    failed = []
    for name in sorted(wheels):
        closure, todo = set(), [name]
        while todo:  # the sibling wheels this one needs, transitively
            dep = todo.pop()
            if dep not in closure:
                closure.add(dep)
                todo.extend(r for r in wheel_requirements(wheels[dep]) if r in wheels)
        module = name.replace("-", "_")
        with tempfile.TemporaryDirectory() as tmp:
            venv = Path(tmp) / "venv"
            py = venv / "bin" / "python"
            steps = [
                ["uv", "venv", "-q", "--python", sys.executable, str(venv)],
                [
                    "uv",
                    "pip",
                    "install",
                    "-q",
                    "--python",
                    str(py),
                    *(str(wheels[d]) for d in sorted(closure)),
                ],
                [str(py), "-c", f"import {module}; print({module}.__name__, {module}.__version__)"],
                [str(venv / "bin" / name), "--version"],
            ]
            if name == "llm-kernels" and shutil.which("g++"):
                # the wheel's own C++ sources build and load (from the cache when unchanged)
                steps.append([str(venv / "bin" / name), "info"])
            for step in steps:
                result = subprocess.run(step, capture_output=True, text=True)
                native_ops = ("linear: native kernel", "attention: native kernel")
                if step[-1] == "info" and not all(op in result.stdout for op in native_ops):
                    result.returncode = result.returncode or 1
                    result.stderr = f"native kernel unavailable:\n{result.stdout}{result.stderr}"
                if result.returncode != 0:
                    print(
                        f"FAIL {name}: {' '.join(step[:3])}...\n{result.stderr.strip()}",
                        file=sys.stderr,
                    )
                    failed.append(name)
                    break
            else:
                print(f"ok   {name} ({', '.join(sorted(closure - {name})) or 'no siblings'})")
    if failed:
        print(
            f"check_wheels: {len(failed)} of {len(wheels)} failed: {', '.join(failed)}",
            file=sys.stderr,
        )
        return 1
    print(f"check_wheels: all {len(wheels)} wheels install alone and import")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "dist"))
