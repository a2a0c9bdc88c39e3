"""Coding a dataset with Ray Data: the driver of ``encode-dataset`` and ``decode-dataset``.

The driver plans the run (:mod:`.plan`: what is under SRC, what is done already), then hands the
rest to Ray Data::

    ray.data.read_binary_files(files, include_paths=True)     # a block per batch; reads hold no CPU
        .map_batches(EncodeWorker | DecodeWorker, compute=ActorPoolStrategy(size=workers),
                     num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, max_restarts=0)

Each worker loads the model once and writes its outputs itself (:mod:`.work`); only the manifest
records travel back, and the driver appends them to DST/manifest.jsonl as they arrive
(:mod:`.manifest`), then rewrites it with one record per source file. Ray Data is told to go on
past a failed block, and a crashed worker is replaced rather than restarted on the same batch
(Ray's default would retry a batch that kills its worker forever): the files of a block Ray lost
(one vanished before being read, or a file killed its worker, e.g. out of memory) get ``failed``
records too. Every source file has a record, and a rerun retries every file that is not done
(``batch_size=1`` isolates a file that kills its worker).

Without an address, a local Ray instance is started for the run (and stopped after it); with
one, the run joins that cluster, where every node needs ccacodec, its model and SRC/DST at the same
paths (a shared file system). A process that has already called ``ray.init`` keeps its session.
Ray's own logging and progress bars are kept off stderr.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from cca_codec.base.errors import CodecError, InputError, UsageError, one_line
from cca_codec.core.checkpoint import load_model
from cca_codec.core.files import EncodeOptions, check_options
from cca_codec.format.container import DEFAULT_MAX_PIXELS
from cca_codec.image.io import IMAGE_SUFFIXES

from .manifest import FAILED, MANIFEST_NAME, ManifestJournal, Record, new_record, read_manifest, write_manifest
from .plan import CCA_EXTENSIONS, Plan, Source, make_plan, output_path
from .work import WEIGHTS_DIGITS, DecodeSettings, DecodeWorker, EncodeSettings, EncodeWorker, Roots

RAY_INSTALL_HINT = "pip install 'ccacodec[ray]'"
RAY_ADDRESS_ENV = "RAY_ADDRESS"
"""Ray's own variable naming a cluster to join; without it and without an address, a local instance starts."""

Progress = Callable[[int, int], None]
"""``progress(files finished, files to code)``, called as the engine's results arrive."""


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a dataset run goes.

    address: a running cluster (``auto``, ``HOST:PORT``, ``ray://HOST:10001``); None: the one
        ``$RAY_ADDRESS`` names, else a local instance with ``num_cpus`` CPUs (default: all of this machine's).
    workers: coding workers (default: as many as the cluster's CPUs, or GPUs, hold at the start).
    cpus_per_worker: CPUs each worker reserves (and torch threads it uses).
    gpus_per_worker: GPUs each worker reserves (fractions share one GPU); above 0 workers code on CUDA.
    batch_size: files a worker codes per batch.
    """

    address: str | None = None
    num_cpus: int | None = None
    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    batch_size: int = 16

    @property
    def device(self) -> str:
        """Where the workers run the network."""
        return "cuda" if self.gpus_per_worker > 0 else "cpu"

    @property
    def threads(self) -> int:
        """Torch threads of one worker."""
        return max(1, int(self.cpus_per_worker))


@dataclass
class DatasetSummary:
    """The outcome of a run: counts over every source file, the failures, and the wall time
    of the whole call (model check, planning, engine start and coding)."""

    total: int
    coded: int
    skipped: int
    failures: list[Record] = field(default_factory=list)
    seconds: float = 0.0
    manifest: Path = Path(MANIFEST_NAME)

    @property
    def failed(self) -> int:
        """Files that failed in this run."""
        return len(self.failures)

    @property
    def images_per_second(self) -> float:
        """Files coded in this run per second of the whole call."""
        return self.coded / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """0, or the exit code of the first failed file (by path), as ``ccacodec encode`` gives."""
        return int(self.failures[0]["exit_code"]) if self.failures else 0

    def as_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready values (failures: path and error)."""
        return {
            "total": self.total, "coded": self.coded, "skipped": self.skipped, "failed": self.failed,
            "seconds": self.seconds, "images_per_second": self.images_per_second, "manifest": str(self.manifest),
            "failures": [{"path": r["path"], "error": r["error"], "exit_code": r["exit_code"]} for r in self.failures],
        }


@dataclass(frozen=True)
class _Job:
    """One direction of coding: which files, their output suffix, the settings a done record must
    match, and the worker class with its settings."""

    src: str
    dst: str
    extensions: frozenset[str]
    suffix: str
    fields: dict[str, Any]
    worker: type
    settings: EncodeSettings | DecodeSettings


def import_ray() -> ModuleType:
    """The ``ray`` module with Ray Data; a UsageError (exit 2) saying how to install it when absent."""
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is the part we need
    except ImportError:
        raise UsageError(f"the Ray engine needs Ray Data, which is not installed: {RAY_INSTALL_HINT}") from None
    return ray


def encode_dataset(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    quality: float | None = None,
    context: str | None = None,
    model: str | None = None,
    tile: int | None = None,
    effort: int = 1,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    ray_options: RayOptions | None = None,
    progress: Progress | None = None,
) -> DatasetSummary:
    """Encode every image under ``src`` to ``.cca`` files under ``dst`` (mirrored paths) with Ray Data.

    ``quality``, ``context``, ``model``, ``tile``, ``effort`` and ``max_pixels`` mean what they mean for
    ``ccacodec encode``; they are checked here, before any worker starts. Files done by an earlier
    run with the same settings are skipped. DST/manifest.jsonl gets a record of every file.

    Raises:
        UsageError: Ray is not installed, bad settings, or the cluster cannot be reached.
        ModelError: the model cannot be loaded.
        InputError: ``src`` is not a directory, or ``dst`` or its manifest cannot be written.
    """
    start = time.perf_counter()
    ray = import_ray()
    options = ray_options or RayOptions()
    loaded = load_model(model)
    # bad settings fail here, before any worker starts
    checked = check_options(loaded, EncodeOptions(quality=quality, context=context, tile=tile, effort=effort))
    q, mode = checked.quality, checked.context
    settings = EncodeSettings(_model_spec(model), q, mode, tile, max_pixels, options.device, options.threads, effort)
    fields = {
        "quality": q, "context": mode, "model": loaded.model_id,
        "weights": checked.network.weights_sha256.hex()[:WEIGHTS_DIGITS], "effort": effort,
    }
    job = _Job(os.fspath(src), os.fspath(dst), IMAGE_SUFFIXES, EncodeWorker.suffix, fields, EncodeWorker, settings)
    return _run(ray, job, options, progress, start)


def decode_dataset(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    model: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    ray_options: RayOptions | None = None,
    progress: Progress | None = None,
) -> DatasetSummary:
    """Decode every ``.cca`` file under ``src`` to PNG under ``dst`` (mirrored paths) with Ray Data.

    Each file is decoded with the model it names, or with ``model``, which must then be the one
    it was made with (as ``ccacodec decode --model``). Otherwise as :func:`encode_dataset`.
    """
    start = time.perf_counter()
    ray = import_ray()
    options = ray_options or RayOptions()
    if model is not None:
        load_model(model)  # a missing model is one error now, not one per file
    settings = DecodeSettings(_model_spec(model), max_pixels, options.device, options.threads)
    job = _Job(os.fspath(src), os.fspath(dst), CCA_EXTENSIONS, DecodeWorker.suffix, {}, DecodeWorker, settings)
    return _run(ray, job, options, progress, start)


def _run(ray: ModuleType, job: _Job, options: RayOptions, progress: Progress | None, start: float) -> DatasetSummary:
    """Plan ``job``, code what is not done, and write the manifest."""
    src, dst = Path(job.src).absolute(), Path(job.dst).absolute()
    if not src.is_dir():
        raise InputError(f"{job.src} is not a directory")
    try:
        dst.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output directory {job.dst}: {exc.strerror or exc}") from None
    manifest = dst / MANIFEST_NAME
    plan = make_plan(src, dst, job.extensions, job.suffix, job.fields, read_manifest(manifest), job.src)
    with ManifestJournal(manifest) as journal:
        journal.add(plan.failed)
        coded = _code(ray, plan, Roots(str(src), str(dst), job.src), job, options, journal, progress) if plan.todo else []
    records = plan.done + plan.failed + coded
    write_manifest(manifest, records)
    failures = sorted((r for r in plan.failed + coded if r["status"] == FAILED), key=lambda r: r["path"])
    return DatasetSummary(
        total=len(records),
        coded=len(coded) - sum(r["status"] == FAILED for r in coded),
        skipped=len(plan.done),
        failures=failures,
        seconds=time.perf_counter() - start,
        manifest=manifest,
    )


def _code(
    ray: ModuleType, plan: Plan, roots: Roots, job: _Job, options: RayOptions, journal: ManifestJournal, progress: Progress | None
) -> list[Record]:
    """Code ``plan.todo`` on Ray Data; return one record per file, journalled as they arrive."""
    sources = {source.path: source for source in plan.todo}
    received: list[Record] = []
    with _ray_session(ray, options), _data_context(ray):
        workers = _worker_count(ray, options, len(plan.todo))
        dataset = ray.data.read_binary_files(
            [os.path.join(roots.src, path) for path in sources],
            include_paths=True,
            ignore_missing_paths=True,
            num_cpus=0,
            override_num_blocks=math.ceil(len(sources) / options.batch_size),
        )
        with warnings.catch_warnings():
            # max_restarts has no named parameter yet: Ray 2.60 warns that such arguments are deprecated
            warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
            dataset = dataset.map_batches(
                job.worker,
                fn_constructor_args=(roots, job.settings),
                batch_size=options.batch_size,
                compute=ray.data.ActorPoolStrategy(size=workers),
                num_cpus=options.cpus_per_worker,
                num_gpus=options.gpus_per_worker or None,
                max_restarts=0,
            )
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            records = [_with_source(json.loads(line), sources) for line in batch["record"]]
            journal.add(records)
            received += records
            if progress is not None:
                progress(len(received), len(sources))
    seen = {record["path"] for record in received}
    lost = [_lost(source, job) for source in plan.todo if source.path not in seen]
    journal.add(lost)
    return received + lost


@contextmanager
def _ray_session(ray: ModuleType, options: RayOptions) -> Iterator[None]:
    """A Ray session for the run: the caller's if it has one, else one started (local) or joined
    (``options.address``) now and shut down afterwards."""
    if ray.is_initialized():
        yield
        return
    joining = options.address is not None or RAY_ADDRESS_ENV in os.environ
    local_cpus = None if joining else options.num_cpus or os.cpu_count() or 1
    try:
        ray.init(
            address=options.address, num_cpus=local_cpus, include_dashboard=False,
            logging_level=logging.ERROR, log_to_driver=False,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {options.address or os.environ[RAY_ADDRESS_ENV]}" if joining else "a local Ray instance"
        raise UsageError(f"cannot start or join {where}: {one_line(str(exc))}") from None
    try:
        yield
    finally:
        ray.shutdown()


@contextmanager
def _data_context(ray: ModuleType) -> Iterator[None]:
    """Meanwhile: no Ray Data progress bars or log lines on stderr, and a failed block (a file
    that vanished, a worker that died) does not stop the run; its files get "lost" records."""
    context = ray.data.DataContext.get_current()
    logger = logging.getLogger("ray.data")
    saved = (context.enable_progress_bars, context.max_errored_blocks, logger.level)
    context.enable_progress_bars, context.max_errored_blocks = False, -1
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        context.enable_progress_bars, context.max_errored_blocks, level = saved
        logger.setLevel(level)


def _worker_count(ray: ModuleType, options: RayOptions, files: int) -> int:
    """``options.workers``, or as many as the cluster's CPUs (GPUs) hold, at most one per batch;
    a UsageError when the cluster cannot hold the workers asked for (they would wait forever)."""
    resources = ray.cluster_resources()
    kind, per_worker = ("GPU", options.gpus_per_worker) if options.gpus_per_worker > 0 else ("CPU", options.cpus_per_worker)
    capacity = int(resources.get(kind, 0) / per_worker + 1e-9)
    if options.workers is None:
        if capacity == 0:
            raise UsageError(f"the Ray cluster has {resources.get(kind, 0):g} {kind}s, too few for one worker of {per_worker:g}")
        return max(1, min(capacity, math.ceil(files / options.batch_size)))
    if options.workers > capacity:
        raise UsageError(
            f"{options.workers} workers of {per_worker:g} {kind} need more than the cluster's {resources.get(kind, 0):g} {kind}s"
        )
    return options.workers


def _with_source(record: Record, sources: dict[str, Source]) -> Record:
    """``record`` with the size and modification time its source had when planned."""
    source = sources.get(record["path"])
    if source is not None:
        record["source_bytes"], record["source_mtime_ns"] = source.size, source.mtime_ns
    return record


def _lost(source: Source, job: _Job) -> Record:
    """The record of a file the engine returned nothing for."""
    label = os.path.join(job.src, source.path)
    return new_record(
        path=source.path, output=output_path(source.path, job.suffix), status=FAILED, exit_code=CodecError.exit_code,
        error=f"{label}: not coded: the file vanished before Ray read it, or its Ray task or worker failed; a rerun retries it",
        **job.fields,
    )


def _model_spec(model: str | None) -> str | None:
    """The model as every worker loads it: a directory made absolute (workers run elsewhere), an id as is."""
    if model is not None and (Path(model) / "model.json").is_file():
        return str(Path(model).absolute())
    return model
