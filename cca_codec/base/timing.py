"""Per-stage wall-clock timing of one encode or decode, for `ccacodec bench`.

The codec's encode and decode paths take a :class:`StageTimer` and wrap each stage in
``timer.stage(name)``; by default they get :data:`NO_TIMER`, which records nothing and
costs one ``nullcontext`` per stage. Stages must not nest (a nested stage would be
counted twice); a stage entered several times (e.g. range coding once per step)
accumulates its time.

Stage names, in coding order:

* encode: ``image read``, ``g_a``, ``hyperprior`` (h_a, z coding, hyper-synthesis),
  ``entropy parameters <k>`` for step k = 1.. (5 steps grouped, 10 checkerboard; the
  slice's LRP counts in its last step), ``range coding`` (y symbols), ``container write``;
* decode: ``container read``, ``hyperprior`` (z decoding, hyper-synthesis),
  ``entropy parameters <k>``, ``range coding`` (y symbols), ``g_s``, ``image write``.

``image read``, ``image write`` and the file parts of the container stages are timed by the
caller (the benchmark); the codec times the rest.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import ContextManager, TypeVar

IMAGE_READ = "image read"
G_A = "g_a"
HYPERPRIOR = "hyperprior"
REFINE = "refine"
RANGE_CODING = "range coding"
G_S = "g_s"
CONTAINER_WRITE = "container write"
CONTAINER_READ = "container read"
IMAGE_WRITE = "image write"
ENTROPY_STEP_PREFIX = "entropy parameters "

T = TypeVar("T")


_PIPELINE = (IMAGE_READ, CONTAINER_READ, G_A, HYPERPRIOR, REFINE, ENTROPY_STEP_PREFIX, RANGE_CODING, G_S, CONTAINER_WRITE, IMAGE_WRITE)


def entropy_step(step: int) -> str:
    """Stage name of the entropy-parameter computation of step ``step`` (1-based)."""
    return f"{ENTROPY_STEP_PREFIX}{step}"


def is_entropy_step(name: str) -> bool:
    """Whether ``name`` is the stage of one entropy-parameter step."""
    return name.startswith(ENTROPY_STEP_PREFIX)


def pipeline_order(name: str) -> tuple[int, int]:
    """Sort key placing stages in pipeline order (entropy steps by number, unknown names last)."""
    if is_entropy_step(name):
        return _PIPELINE.index(ENTROPY_STEP_PREFIX), int(name[len(ENTROPY_STEP_PREFIX):])
    return (_PIPELINE.index(name) if name in _PIPELINE else len(_PIPELINE)), 0


class StageTimer:
    """Accumulates wall-clock seconds per named stage.

    Args:
        sync: called before each clock reading (``torch.cuda.synchronize`` on a GPU), so
            that asynchronous device work is charged to the stage that queued it.
    """

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self.seconds: dict[str, float] = {}
        """Seconds per stage, in the order the stages were first entered."""
        self._sync = sync or (lambda: None)

    @contextlib.contextmanager
    def _timed(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def stage(self, name: str) -> ContextManager[None]:
        """A context manager adding the time spent inside it to stage ``name``."""
        return self._timed(name)

    def wrap(self, name: str, function: Callable[..., T]) -> Callable[..., T]:
        """``function``, with the time of every call added to stage ``name``."""

        def timed(*args: object, **kwargs: object) -> T:
            with self.stage(name):
                return function(*args, **kwargs)

        return timed


class _NoTimer(StageTimer):
    """A StageTimer that records nothing."""

    def stage(self, name: str) -> ContextManager[None]:
        return contextlib.nullcontext()

    def wrap(self, name: str, function: Callable[..., T]) -> Callable[..., T]:
        return function


NO_TIMER: StageTimer = _NoTimer()
"""The default timer of the codec paths: no measurement, no overhead beyond a nullcontext."""
