"""framecast.heap: freed blocks stay in the process, so a repeated big allocation stops faulting
its pages in again (each case in a fresh interpreter: the setting is process-wide)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PLATFORM = str(Path(__file__).resolve().parents[1] / "platform")

# 48 MiB blocks: past glibc's default mmap threshold and its dynamic ceiling (32 MiB), so without
# the setting every one is mmapped, faulted in page by page and unmapped on free.
PROBE = """
import resource, sys
import numpy as np
from framecast.heap import keep_freed_memory
kept = keep_freed_memory()
np.ones(12 << 20, np.float32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    np.ones(12 << 20, np.float32)
print(int(kept), (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 10)
"""

# The same in a thread started before any setting: the environment alone must reach it.
THREAD_PROBE = """
import resource, threading
import numpy as np
def go():
    np.ones(12 << 20, np.float32)
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    for _ in range(10):
        np.ones(12 << 20, np.float32)
    print(1, (resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before) // 10)
t = threading.Thread(target=go)
t.start()
t.join()
"""

glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or
                           os.confstr("CS_GNU_LIBC_VERSION") is None, reason="glibc only")


def probe(**env: str) -> tuple[bool, int]:
    """(setting in force, minor page faults per 48 MiB allocation) in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": PLATFORM,
                                          # 4 KiB pages, so faults count pages
                                          "NUMPY_MADVISE_HUGEPAGE": "0", **env})
    kept, faults = out.stdout.split()
    return kept == "1", int(faults)


@glibc
def test_freed_blocks_are_reused_not_faulted_in_again() -> None:
    kept, faults = probe()
    off, faults_off = probe(FRAMECAST_KEEP_FREED_MEMORY="0")
    assert kept and not off
    pages = (48 << 20) // os.sysconf("SC_PAGE_SIZE")
    assert faults_off > pages // 2  # the default: every block faulted in again
    assert faults < pages // 20


def test_opt_out_leaves_malloc_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from framecast import heap

    monkeypatch.setattr(heap, "_applied", None)
    monkeypatch.setenv("FRAMECAST_KEEP_FREED_MEMORY", "0")
    assert heap.keep_freed_memory() is False
    assert heap.keep_freed_memory() is False  # decided once per process


def test_worker_env_sets_tunables_and_keeps_the_users(monkeypatch: pytest.MonkeyPatch) -> None:
    from framecast import heap

    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert heap.worker_env() == {"GLIBC_TUNABLES": heap.TUNABLES}
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=4")
    assert heap.worker_env() == {"GLIBC_TUNABLES": heap.TUNABLES + ":glibc.malloc.arena_max=4"}
    inherited = heap.TUNABLES + ":glibc.malloc.arena_max=4"
    monkeypatch.setenv("GLIBC_TUNABLES", inherited)  # a worker passing it on: not repeated
    assert heap.worker_env() == {"GLIBC_TUNABLES": inherited}
    monkeypatch.setenv("FRAMECAST_KEEP_FREED_MEMORY", "0")  # off here: off in the workers too
    assert heap.worker_env() == {"FRAMECAST_KEEP_FREED_MEMORY": "0"}


@glibc
def test_tunables_reach_threads_from_process_start() -> None:
    """Through the environment alone (no call), a thread's repeated 48 MiB blocks stop faulting:
    what a Serve replica's request thread and a Train worker's loop get."""
    from framecast import heap

    def faults(**env: str) -> int:
        out = subprocess.run([sys.executable, "-c", THREAD_PROBE], capture_output=True, text=True,
                             check=True, env={**os.environ, "PYTHONPATH": PLATFORM,
                                              "NUMPY_MADVISE_HUGEPAGE": "0", **env})
        return int(out.stdout.split()[1])
    pages = (48 << 20) // os.sysconf("SC_PAGE_SIZE")
    assert faults(GLIBC_TUNABLES="") > pages // 2
    assert faults(**heap.worker_env()) < pages // 20
