"""Coding a whole dataset (a folder tree of images, or of ``.cca`` files) on a Ray cluster.

Python entry points (``ccacodec encode-dataset`` / ``decode-dataset`` on the command line)::

    from cca_codec.dataset import RayOptions, decode_dataset, encode_dataset

    summary = encode_dataset("photos/", "coded/", quality=4, ray_options=RayOptions(address="auto"))
    print(summary.coded, summary.skipped, summary.failed, summary.images_per_second)
    decode_dataset("coded/", "restored/")

Modules, each with one job: :mod:`.manifest` (the JSONL record of every file), :mod:`.plan`
(what to code, what is done), :mod:`.work` (the per-worker callable classes), :mod:`.engine`
(the Ray Data pipeline and the entry points). Ray is an optional dependency
(``pip install 'ccacodec[ray]'``), imported only when a run starts.
"""
from .engine import DatasetSummary, RayOptions, decode_dataset, encode_dataset

__all__ = ["DatasetSummary", "RayOptions", "decode_dataset", "encode_dataset"]
