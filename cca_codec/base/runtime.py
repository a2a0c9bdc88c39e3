"""Process settings for the command-line tools: how OpenMP threads wait, how the C heap
recycles memory, how many threads torch uses, and how a finished process exits. The first takes
effect only before torch is imported (OpenMP reads it when it loads); none changes any result.

Measured on the 2-core machine (kodim23, 2 threads, docs/RESULTS.md, *Speed*):

* OpenMP waiting. The coding path runs hundreds of small parallel ops, so how a worker thread
  waits between them matters. Sleeping at once (``OMP_WAIT_POLICY=PASSIVE``) costs a wake-up
  every op: encode 0.65 s against 0.51 s with libgomp's default spin. Spinning long (the
  default) is ruinous when another process holds a core: 1.84 s against 0.90 s. A short spin
  (``GOMP_SPINCOUNT=10000``) keeps most of the idle speed and bounds the loss under load.
* Heap. glibc serves every block over its dynamic mmap threshold with fresh pages from the
  kernel and returns them on free, so each new activation tensor (12 MB at half resolution)
  pays a page fault per 4 KiB page on first touch: about a quarter of g_a's and g_s's time.
  Raising the mmap threshold to its maximum (32 MiB) and keeping freed memory in the heap
  reuses those pages (peak memory unchanged: the same blocks are live at the peak).
* Exit. With torch loaded, the interpreter's teardown (clearing every module and freeing the
  objects torch made) takes about 0.1 s of a fresh process even after ``gc.freeze()``; a
  process whose work is done can skip it (``leave_process``).
"""
from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import os
import sys
import threading
from collections.abc import MutableMapping
from pathlib import Path
from typing import NoReturn

SPIN_COUNT = "10000"
"""libgomp spin iterations before a waiting OpenMP thread sleeps (its default is 300000)."""

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc refuses more on 64-bit systems
_TRIM_THRESHOLD = 1 << 30
_TOP_PAD = 64 << 20


def set_thread_waiting(environ: MutableMapping[str, str] = os.environ) -> None:
    """Give OpenMP threads a short spin before they sleep, unless the user chose a policy
    (``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` already set). Effective only before torch loads."""
    if "OMP_WAIT_POLICY" not in environ and "GOMP_SPINCOUNT" not in environ:
        environ["GOMP_SPINCOUNT"] = SPIN_COUNT


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep and reuse large freed blocks instead of unmapping them.
    Returns whether it took effect (False off glibc, e.g. on macOS or musl)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    settings = ((_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD), (_M_TOP_PAD, _TOP_PAD))
    return all(mallopt(param, value) == 1 for param, value in settings)


def only_thread() -> bool:
    """Whether no thread but the main one (and daemons, which exit does not wait for) is alive."""
    main = threading.main_thread()
    return all(t is main or t.daemon for t in threading.enumerate())


def leave_process(code: int) -> NoReturn:
    """End the process with exit status `code`, skipping the interpreter's teardown.

    For a process whose files are written and closed and that runs no other thread
    (`only_thread`): the atexit handlers run and the standard streams are flushed, in that
    order, as on a normal exit; a stream that cannot be flushed turns status 0 into 120, as
    CPython does."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            code = code or 120
    os._exit(code)


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask where the OS keeps one, else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_info(text: str | None = None) -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo ("model name", "cpu family", "model", "flags",
    ...), values stripped; `text` is that file's content, read when None (empty where there is none)."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
        except OSError:
            text = ""
    fields: dict[str, str] = {}
    for line in text.splitlines():  # each key's first value: the first processor's
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def set_torch_threads(threads: int | None) -> None:
    """Let torch use ``threads`` CPU threads: intra-op and, when still possible (once per process,
    before any parallel work), inter-op. None leaves torch's own choice; torch is imported only then."""
    if threads is None:
        return
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # only settable once per process, before any parallel work
        pass


def tune_process() -> None:
    """Both settings, for a command-line process about to import torch."""
    set_thread_waiting()
    keep_freed_memory()
