"""Native CPU kernels, compiled on this machine at first use.

Three ops, for the things decode spends its time in (float32 activations on CPU):

- ``torch.ops.llm_kernels.linear_rows`` (``csrc/linear_rows.cpp``): ``F.linear`` for up to
  :data:`MAX_ROWS` rows. It reads each weight once for all rows: as fast as torch's BLAS (MKL)
  at one row, and 1.5-1.7x as fast at 2 to 8 (one row per stream in a batch).
  :func:`llm_kernels.linear` dispatches those products to it.
- ``torch.ops.llm_kernels.attend_rows`` (``csrc/attend_rows.cpp``): attention of up to
  :data:`MAX_ROWS` queries per row against a KV cache, under a boolean mask, grouped-query
  heads reading each key and value once. :func:`llm_kernels.attention` dispatches decode's
  attention to it.
- ``torch.ops.llm_kernels.quant_rows`` (``csrc/quant_rows.cpp``): the same product with the
  weights kept quantized (GGUF Q8_0 / Q4_0 / Q4_1 blocks, the project's int8 and q4), with
  int8 dot products on activations quantized per block of 32 or with the weights widened in
  registers. :func:`llm_kernels.quant.quant_linear` dispatches to it.

Figures in docs/benchmarks.md. :func:`available` compiles the sources into one library with
the C++ compiler on ``PATH`` (``$CXX``, else ``g++``) against torch's own headers and
libraries, for this CPU (``-march=native``), once per version of the sources, torch and CPU:
the library is kept under ``$LLM_KERNELS_CACHE`` (default ``~/.cache/llm-kernels``) and later
processes load it in milliseconds. Without a compiler, on a platform other than Linux, or with
``LLM_KERNELS_NATIVE=0``, nothing is built and the dispatcher keeps torch's ops; :data:`error`
then says why.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

MAX_ROWS = 16  # input rows that linear_rows takes (kMaxRows in its source); queries per row
# that llm_kernels.attention hands to attend_rows
SOURCES = tuple(
    Path(__file__).parent / "csrc" / name
    for name in (
        "linear_rows.cpp",
        "attend_rows.cpp",
        "quant_rows.cpp",
        "decode_layers.cpp",
        "team.cpp",
    )
)
HEADERS = tuple(
    Path(__file__).parent / "csrc" / name for name in ("work_share.h", "vec16.h", "spin_wait.h")
)  # part of the library's key

log = logging.getLogger(__name__)
error: str | None = None  # why the native kernels are unavailable, once available() said so

_lock = threading.Lock()
_loaded: bool | None = None


class _Disabled(RuntimeError):
    """Not an error: the user turned the native kernels off."""


def cache_dir() -> Path:
    """Where compiled libraries are kept."""
    if "LLM_KERNELS_CACHE" in os.environ:
        return Path(os.environ["LLM_KERNELS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llm-kernels"


def _torch_dirs() -> tuple[list[Path], Path]:
    root = Path(torch.__file__).parent
    return [root / "include", root / "include" / "torch" / "csrc" / "api" / "include"], root / "lib"


def compile_commands(compiler: str, workdir: Path, output: Path) -> list[list[str]]:
    """The commands that build the library at ``output``: one per source (objects in
    ``workdir``, run in parallel), then the link."""
    includes, libdir = _torch_dirs()
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    flags = [
        "-O3",
        "-march=native",
        "-fopenmp",  # torch's parallel_for is OpenMP in its headers; the runtime is torch's
        "-fPIC",
        "-std=c++20",
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        *[f"-I{d}" for d in includes],
    ]
    objects = [workdir / f"{source.stem}.o" for source in SOURCES]
    steps = [
        [compiler, *flags, "-c", str(source), "-o", str(obj)]
        for source, obj in zip(SOURCES, objects, strict=True)
    ]
    link = [compiler, "-shared", "-fopenmp", *map(str, objects), "-o", str(output)]
    link += [f"-L{libdir}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{libdir}"]
    return [*steps, link]


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def library_path(compiler: str) -> Path:
    """The cached library for these sources, torch, compiler and CPU (built or not)."""
    key = hashlib.sha256()
    for source in (*SOURCES, *HEADERS):
        key.update(source.read_bytes())
    for part in (torch.__version__, compiler, _cpu_flags()):
        key.update(part.encode())
    return cache_dir() / f"llm_kernels-{key.hexdigest()[:16]}.so"


def build(compiler: str, output: Path) -> None:
    """Compile the library to ``output``, atomically (a failed or concurrent build leaves no
    partial file there), the sources in parallel. Raises ``RuntimeError`` with the compiler's
    first error line."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=output.parent) as work:
        library = Path(work) / output.name
        *sources, link = compile_commands(compiler, Path(work), library)
        running = [
            subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for cmd in sources
        ]
        for stderr, code in [(proc.communicate()[1], proc.returncode) for proc in running]:
            _check(compiler, stderr, code)
        linked = subprocess.run(link, capture_output=True, text=True, check=False)
        _check(compiler, linked.stderr, linked.returncode)
        os.replace(library, output)


def _check(compiler: str, stderr: str, code: int) -> None:
    if code != 0:
        first = next((line for line in stderr.splitlines() if "error" in line), f"exit {code}")
        raise RuntimeError(f"{compiler} failed on the native kernels' sources: {first}")


def _register_fake() -> None:
    @torch.library.register_fake("llm_kernels::linear_rows")
    def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return x.new_empty((*x.shape[:-1], weight.shape[0]))

    @torch.library.register_fake("llm_kernels::attend_rows")
    def _(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float
    ) -> torch.Tensor:
        return q.new_empty(q.shape)

    @torch.library.register_fake("llm_kernels::quant_rows")
    def _(
        x: torch.Tensor,
        qweight: torch.Tensor,
        scales: torch.Tensor | None,
        mins: torch.Tensor | None,
        format: int,
        group_size: int,
        bias: torch.Tensor | None,
        activations: int,
    ) -> torch.Tensor:
        return x.new_empty((*x.shape[:-1], qweight.shape[0]))

    @torch.library.register_fake("llm_kernels::decode_layers")
    def _(x: torch.Tensor, *args: object) -> torch.Tensor:
        return x.new_empty(x.shape)


def available() -> bool:
    """Whether the native ops can run: builds them (the first time on this machine) and loads
    them on the first call. Never raises: a failure is logged once and kept in :data:`error`."""
    global _loaded, error
    if _loaded is not None:
        return _loaded
    with _lock:
        if _loaded is not None:
            return _loaded
        try:
            _load()
            _loaded = True
        except Exception as exc:  # any failure means: use torch's ops
            error = str(exc)
            level = logging.DEBUG if isinstance(exc, _Disabled) else logging.WARNING
            log.log(
                level, "llm_kernels: native CPU kernels unavailable (%s); using torch's ops", exc
            )
            _loaded = False
    return _loaded


def _load() -> None:
    if os.environ.get("LLM_KERNELS_NATIVE", "1") == "0":
        raise _Disabled("disabled by LLM_KERNELS_NATIVE=0")
    if not sys.platform.startswith("linux"):
        raise RuntimeError(f"native kernels are built on Linux only, not {sys.platform}")
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler: {compiler!r} is not on PATH")
    path = library_path(compiler)
    if not path.exists():
        log.info("llm_kernels: compiling native CPU kernels for this machine (once, about 20 s)")
        build(compiler, path)
    torch.ops.load_library(str(path))
    _register_fake()
