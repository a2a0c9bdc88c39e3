"""Batches of files for ``ccacodec encode`` and ``decode``: which output each input gets, and
running the work of every file in this process or in child processes.

A job is ``(input, output)``, either of which may be ``"-"`` (standard input or output). A failing
file does not stop the others: its error becomes its exit code. A :class:`UsageError` (an option
that cannot work for any file) and ``KeyboardInterrupt`` stop the run.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from cca_codec.base.errors import EXIT_INTERRUPTED, InputError, UsageError
from cca_codec.base.fileio import STDIN, STDOUT

EXIT_OK = 0

Job = tuple[str, str]
"""(input path or "-", output path or "-") of one file to process."""

STOP_CODES = (UsageError.exit_code, EXIT_INTERRUPTED)
"""Exit codes of a child process that stop the run: no further child starts."""


def plan_jobs(inputs: Sequence[str], output: str | None, out_dir: str | None, suffix: str) -> list[Job]:
    """Pair every input with its output path, checking the option rules (UsageError).

    One input: ``output`` (``-o``) if given, else ``DIR/<name><suffix>`` with ``out_dir``
    (``-d``), else the input with ``suffix``. Several inputs: ``output`` is not allowed; outputs go
    to ``out_dir`` or next to each input. Standard input needs ``output`` and cannot be one of
    several inputs.
    """
    if output is not None and out_dir is not None:
        raise UsageError("use either -o/--output or -d/--output-dir, not both")
    if len(inputs) > 1:
        if output is not None:
            raise UsageError("-o/--output takes one input only; use -d/--output-dir DIR with several inputs")
        if STDIN in inputs:
            raise UsageError("standard input (-) can only be encoded or decoded on its own, with -o")
    if output is not None:
        jobs = [(inputs[0], output)]
    elif STDIN in inputs:
        raise UsageError("reading standard input (-) needs -o OUT (or -o - for standard output)")
    else:
        jobs = [(src, default_output(src, out_dir, suffix)) for src in inputs]
    targets = [os.path.abspath(dst) for _, dst in jobs if dst != STDOUT]
    if len(set(targets)) != len(targets):
        raise UsageError("several inputs would be written to the same output file")
    for src, dst in jobs:
        if src != STDIN and dst != STDOUT and os.path.abspath(src) == os.path.abspath(dst):
            raise UsageError(f"output {dst} would overwrite its input")
    return jobs


def default_output(src: str, out_dir: str | None, suffix: str) -> str:
    """``src`` with ``suffix`` instead of its own, in ``out_dir`` when given."""
    renamed = Path(src).with_suffix(suffix)
    return str(Path(out_dir) / renamed.name if out_dir is not None else renamed)


def make_output_dir(out_dir: str | None) -> None:
    """Create ``out_dir`` (and its parents) if given and not there yet (InputError when it cannot be)."""
    if out_dir is None:
        return
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output directory {out_dir}: {exc.strerror or exc}") from None


def check_not_exists(path: str, no_overwrite: bool) -> None:
    """With ``no_overwrite``, refuse an existing output (InputError) before any work is done for it."""
    if no_overwrite and path != STDOUT and os.path.lexists(path):
        raise InputError(f"{path} exists (--no-overwrite)")


def run_in_process(
    jobs: Sequence[Job], work: Callable[[str, str], None], failed: Callable[[Exception, str], int], done: Callable[[], None]
) -> list[int]:
    """``work(src, dst)`` for every job, one after the other; the exit code of each.

    An exception other than a UsageError goes to ``failed(exc, src)``, which reports it and returns
    its exit code, and the next job runs. ``done()`` is called after each job.
    """
    codes = []
    for src, dst in jobs:
        try:
            work(src, dst)
        except UsageError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported, then the next file is processed
            codes.append(failed(exc, src))
        else:
            codes.append(EXIT_OK)
        done()
    return codes


def run_processes(commands: Sequence[Sequence[str]], processes: int, done: Callable[[], None]) -> list[int]:
    """Run each command as a child process, ``processes`` at a time; their exit codes in command order.

    The children inherit standard error and output (where they write their own messages and
    data) and get no standard input. A child that exits with a usage error or 130 stops the run
    (the codes of the children started until then are returned). On any exception (Ctrl-C) the
    running children get SIGINT too, and each removes its temporary file; a child interrupted
    raises KeyboardInterrupt here. ``done()`` is called as each child ends.
    """
    codes: dict[int, int] = {}
    running: dict[subprocess.Popen, int] = {}
    pending = list(enumerate(commands))
    try:
        while pending or running:
            while pending and len(running) < processes:
                index, command = pending.pop(0)
                running[subprocess.Popen(list(command), stdin=subprocess.DEVNULL)] = index
            finished = _wait_any(running)
            codes[running.pop(finished)] = finished.returncode
            done()
            if finished.returncode in STOP_CODES:
                pending.clear()
    except BaseException:
        for child in running:
            child.send_signal(signal.SIGINT)
        for child in running:
            child.wait()
        raise
    if EXIT_INTERRUPTED in codes.values():
        raise KeyboardInterrupt
    return [codes[i] for i in sorted(codes)]


def _wait_any(running: dict[subprocess.Popen, int]) -> subprocess.Popen:
    """Block until one of the ``running`` children exits; return it (its returncode set)."""
    while True:
        for child in running:
            if child.poll() is not None:
                return child
        time.sleep(0.05)
