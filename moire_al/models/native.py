"""Build and load the package's own C++ kernels (``moire_al/models/csrc/*.cpp``).

A kernel is compiled once per machine with the C++ compiler (``$CXX``, else ``c++``/``g++``)
into a content-keyed cache (``$MOIRE_AL_NATIVE_CACHE``, else ``<data dir>/native``): the
key hashes the source, the flags and the compiler, so an edited source or another
compiler builds anew and concurrent processes never load a half-written library
(it is written under a temporary name and renamed). ``scripts/setup.sh`` builds them
ahead (``python -m moire_al.models.native``); otherwise the first use does.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from moire_al.errors import ModelError

SRC_DIR = Path(__file__).with_name("csrc")
FLAGS = ("-O3", "-std=c++17", "-fPIC", "-shared", "-fno-math-errno")
KERNELS = ("d3", "ace_rows", "blr")
#: Extra flags per kernel, tried first (a compiler that rejects them builds with FLAGS alone).
#: d3: SIMD pair loops for this CPU (`omp simd` only; its threads are std::thread; measured
#: in docs/benchmarks.md); -march=native puts the CPU's identity into the cache key.
#: ace_rows: its threads are std::thread. blr: an error-free summation, so no fused
#: multiply-adds (its results must equal the numpy fallback's bit for bit).
EXTRA_FLAGS = {"d3": ("-march=native", "-fopenmp-simd", "-pthread"), "ace_rows": ("-pthread",),
               "blr": ("-ffp-contract=off", "-pthread")}
_LOCK = threading.Lock()
_LOADED: dict = {}


def cache_dir() -> Path:
    from moire_al.config import environment

    env = environment()
    return Path(env.native_cache).expanduser() if env.native_cache else env.data / "native"


def compiler() -> str | None:
    for c in ([os.environ["CXX"]] if os.environ.get("CXX") else []) + ["c++", "g++", "clang++"]:
        path = shutil.which(c)
        if path:
            return path
    return None


def library_path(name: str) -> Path:
    """Build (if needed) and return the path of kernel ``name``'s shared library."""
    src = SRC_DIR / f"{name}.cpp"
    cxx = compiler()
    if cxx is None:
        raise ModelError(f"no C++ compiler to build the {name} kernel (install g++ or set CXX)")
    text = src.read_bytes()
    extra = EXTRA_FLAGS.get(name, ())
    flags = " ".join(FLAGS + extra) + (_cpu_identity() if "-march=native" in extra else "")
    key = hashlib.sha256(text + flags.encode() + cxx.encode()).hexdigest()[:16]
    out = cache_dir() / f"lib{name}-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cxx, *FLAGS, *extra, str(src), "-o", tmp], capture_output=True, text=True)
        if proc.returncode != 0 and extra:
            proc = subprocess.run([cxx, *FLAGS, str(src), "-o", tmp], capture_output=True, text=True)
        if proc.returncode != 0:
            raise ModelError(f"building the {name} kernel failed: {proc.stderr.strip()[-2000:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _cpu_identity() -> str:
    """The CPU's model and feature flags (a -march=native build runs only there)."""
    import platform

    try:
        info = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
        return "".join(ln for ln in info.splitlines() if ln.startswith(("model name", "flags")))
    except OSError:
        return platform.machine() + platform.processor()


def load(name: str) -> ctypes.CDLL:
    """The loaded kernel library (built on first use, cached per process)."""
    with _LOCK:
        if name not in _LOADED:
            _LOADED[name] = ctypes.CDLL(str(library_path(name)))
        return _LOADED[name]


def kernel_threads() -> int:
    """Threads of the compiled kernels: ``$MOIRE_AL_THREADS``, else the cores this process
    may use."""
    from moire_al.config import environment

    return environment().threads or len(os.sched_getaffinity(0))


def dptr(a):
    """A float64 C-contiguous array as ``double*`` (None stays NULL)."""
    return None if a is None else a.ctypes.data_as(ctypes.POINTER(ctypes.c_double))


def iptr(a):
    """An int32 C-contiguous array as ``int*``."""
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_int))


_GOMP: list = []


@contextlib.contextmanager
def openmp_threads(n: int):
    """OpenMP (libgomp) parallel regions started by this thread use at most ``n`` threads."""
    with _LOCK:
        if not _GOMP:
            name = ctypes.util.find_library("gomp")
            try:
                _GOMP.append(ctypes.CDLL(name) if name else None)
            except OSError:
                _GOMP.append(None)
    lib = _GOMP[0]
    if lib is None:
        yield
        return
    before = lib.omp_get_max_threads()
    lib.omp_set_num_threads(int(n))
    try:
        yield
    finally:
        lib.omp_set_num_threads(before)


def neighbour_list(positions, cell, pbc, cutoff):
    """(i, j, D, S) of all pairs within ``cutoff``, sorted by i (ace-jax's backend: matscipy),
    with OpenMP at one thread: on a machine whose cores are busy (the DFT runs), its parallel
    region spin-waited ~170 ms per call for lists that take 0.5 ms on one thread (measured
    on a 196-atom bilayer)."""
    from ace_jax.eval.nlist import _neighbour_list

    with openmp_threads(1):
        return _neighbour_list(positions, cell, pbc, cutoff)


if __name__ == "__main__":  # scripts/setup.sh: build every kernel ahead of first use
    for k in KERNELS:
        print(library_path(k))
