"""Keep freed memory in the process for the next batch.

glibc's malloc hands a large freed block back to the kernel (it was mmapped, or it sat at the top
of the heap past the trim threshold), so the next forward pass faults the same pages in again,
zero-filled, one 4 KiB page at a time. A model that allocates the same big activations on every
call then spends a large share of each batch or training step in the kernel, more the larger the
batch: much of why batching paid so little on CPU (benchmarks/RESULTS.md, heap,
2026-12-03). Raising the mmap and trim thresholds keeps those blocks in the process;
its resident size stays at its peak working set instead of rising and falling with every call.

Threads other than the main one get heaps of their own (arenas) that give memory back whatever
the thresholds say, and a thread keeps the arena it first allocated from. Ray runs a Serve
replica's and a Train worker's code in such a thread, started before any of our code runs, so
those processes get the setting from their environment at start (`worker_env`, passed as a
runtime_env: glibc reads GLIBC_TUNABLES before main) with one arena for all threads.
`keep_freed_memory` sets the same for the calling process from then on (its main thread and the
threads it starts later). Both change nothing on a libc other than glibc. Set
FRAMECAST_KEEP_FREED_MEMORY=0 to leave malloc as it is.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
# Blocks up to MMAP_BYTES come from the heap, not from mmap. glibc accepts this much for the main
# thread's heap; one that refuses it gets the limit every glibc accepts on 64-bit. Other threads'
# heaps cannot hold a block over 64 MiB: theirs are still mmapped.
MMAP_BYTES, MMAP_BYTES_FALLBACK = 1 << 30, 32 << 20
TRIM_BYTES = 1 << 30  # free memory kept above the heap's top before it goes back to the kernel

TUNABLES = (f"glibc.malloc.arena_max=1:glibc.malloc.mmap_threshold={MMAP_BYTES}:"
            f"glibc.malloc.trim_threshold={TRIM_BYTES}")

_applied: bool | None = None


def enabled() -> bool:
    """Not turned off by FRAMECAST_KEEP_FREED_MEMORY=0 (a driver on another OS still passes the
    setting on to Linux workers: other libcs ignore GLIBC_TUNABLES)."""
    return os.environ.get("FRAMECAST_KEEP_FREED_MEMORY", "1") != "0"


def worker_env() -> dict[str, str]:
    """Environment variables that give a new process the setting from its start (for Ray
    actors' runtime_env); when it is off here, the variable that turns it off there too. A
    GLIBC_TUNABLES already set here comes last, so what the user set wins."""
    if not enabled():
        return {"FRAMECAST_KEEP_FREED_MEMORY": "0"}
    mine = os.environ.get("GLIBC_TUNABLES", "")
    if TUNABLES in mine:  # inherited from a process that had it
        return {"GLIBC_TUNABLES": mine}
    return {"GLIBC_TUNABLES": TUNABLES + (f":{mine}" if mine else "")}


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks (up to MMAP_BYTES each, TRIM_BYTES of free heap at most)
    for reuse, instead of returning them to the kernel. Returns whether the setting is in force;
    False off Linux/glibc or when FRAMECAST_KEEP_FREED_MEMORY=0. Idempotent."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not enabled() or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # Both values must fit a C int: a wrapped value of 0 would trim on every free.
    mmap_set = mallopt(M_MMAP_THRESHOLD, MMAP_BYTES) or mallopt(M_MMAP_THRESHOLD,
                                                                MMAP_BYTES_FALLBACK)
    _applied = bool(mmap_set) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_BYTES))
    mallopt(M_ARENA_MAX, 1)  # threads that have not allocated yet share the main heap
    return _applied
