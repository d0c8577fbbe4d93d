"""How many threads the BLAS library uses, for a block of code.

Dense eigensolvers of matrices with P ~ 1000 gain little from threads, and on a machine whose
cores are shared, spinning BLAS threads can slow them down by an order of magnitude. NumPy and
SciPy do not expose the thread count, so :func:`limit_blas_threads` finds every OpenBLAS loaded
in the process and calls its own setter.

>>> with limit_blas_threads(1):                  # doctest: +SKIP
...     np.linalg.eigvalsh(matrix)
"""

from __future__ import annotations

import contextlib
import ctypes
from typing import Iterator

__all__ = ["limit_blas_threads"]


def _openblas_thread_controls() -> list[tuple[object, object]]:
    """(get, set) thread-count functions of every OpenBLAS loaded in this process (Linux)."""
    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split()[-1] for line in fh if "openblas" in line.lower() and "/" in line}
    except OSError:
        return []
    controls = []
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", "", "_"):
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    get.restype, get.argtypes = ctypes.c_int, []
                    put.restype, put.argtypes = None, [ctypes.c_int]
                    controls.append((get, put))
                    break
            else:
                continue
            break
    return controls


@contextlib.contextmanager
def limit_blas_threads(n: int = 1) -> Iterator[None]:
    """Run the block with at most ``n`` OpenBLAS threads, then restore the previous count.

    Dense eigensolvers of matrices with P ~ 1000 gain little from threads, and on
    a machine whose cores are shared, spinning BLAS threads can slow them down by
    an order of magnitude. A no-op where no OpenBLAS is found.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    controls = _openblas_thread_controls()
    previous = [get() for get, _ in controls]
    try:
        for _, put in controls:
            put(n)
        yield
    finally:
        for (_, put), old in zip(controls, previous):
            put(old)
