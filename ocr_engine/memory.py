"""Handing freed heap memory back to the operating system after a large call.

glibc's malloc keeps freed blocks below its mmap threshold (which grows to 32 MB as large
arrays come and go) inside the process, so after one large image the worker's RSS stays high
even though numpy and onnxruntime have freed them. `malloc_trim(0)` returns those pages: after
each of the worst inputs the limits allow, a worker held 25-65 MB less with it (on top of the
arena shrinkage, backends.py; 200 MB less with the arena shrunk after every run), for 10-17 ms
a call, so the pipeline calls it only after a call with a large image or detection input.
Elsewhere than glibc (musl, macOS) it is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# A call whose image plus detection input has more pixels than this is large (a 2000 x 2000
# scan); the benchmark page (1000 x 700, detection at 672 x 960) is far below.
LARGE_CALL_PIXELS = 4_000_000


def _find_malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _find_malloc_trim()


def release_freed_memory() -> None:
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
