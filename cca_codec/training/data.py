"""Training data: a compact pack of photo crops, and random batches cut from it.

A pack is a folder with `train/` and `val/` JPEG crops (all CROP x CROP pixels, 4:4:4) and a
`pack.json` describing how it was made. It is small enough to travel to the GPU machine with the
repository (aim: 20-35 MiB). A lossless pack (`--lossless`) stores the crops as PNG instead, about
six times larger: for a local CPU run whose top qualities should not learn JPEG q88's block
artifacts (on average 37.8 dB from the source, the level the top qualities aim at). Photos are downscaled first (short side to a
random length in PACK_SHORT_SIDE, 400-600 px, when larger; `--short-side 800,1200` keeps more of a
high-resolution photo's own scale, `--short-side none` keeps its pixels as they are), which removes
sensor noise and JPEG artifacts of the originals, then cut into crops in
proportion to their area. Validation crops come from a held-out subset of the photos, chosen by
a hash of the file name; Kodak is never part of it.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cca_codec.image.io import IMAGE_SUFFIXES

PACK_CROP = 288
PACK_JPEG_QUALITY = 88
PACK_MAX_CROPS = 5
PACK_SHORT_SIDE = (400, 600)
PACK_FORMAT = "ccacodec-pack-1"
CROP_SUFFIXES = (".jpg", ".png")


def _is_validation(name: str, fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")
    return h < fraction * 2**32


def _crops_from_photo(
    img: Image.Image, rng: np.random.Generator, crop: int, max_crops: int, short_side: tuple[float, float] | None
) -> list[Image.Image]:
    short = min(img.size)
    if short_side is not None and short > short_side[1]:
        target = rng.uniform(*short_side)
        scale = target / short
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
    if min(img.size) < crop:
        return []
    n = int(np.clip(round(img.width * img.height / (crop * crop * 2.5)), 1, max_crops))
    out = []
    for _ in range(n):
        x = int(rng.integers(0, img.width - crop + 1))
        y = int(rng.integers(0, img.height - crop + 1))
        out.append(img.crop((x, y, x + crop, y + crop)))
    return out


def build_pack(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    crop: int = PACK_CROP,
    jpeg_quality: int = PACK_JPEG_QUALITY,
    max_crops: int = PACK_MAX_CROPS,
    short_side: tuple[float, float] | None = PACK_SHORT_SIDE,
    val_fraction: float = 0.03,
    seed: int = 0,
    lossless: bool = False,
) -> dict:
    """Turn a folder of photographs into a training pack (JPEG crops at `jpeg_quality`, or PNG
    crops with `lossless`). A photo whose short side is longer than `short_side`'s upper end (pixels)
    is first downscaled to a short side drawn uniformly from that range; None keeps every photo at its
    own size. Returns the pack description."""
    src, dst = Path(source), Path(out)
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images in {src}")
    rng = np.random.default_rng(seed)
    counts = {"train": 0, "val": 0}
    total_bytes = 0
    for split in counts:
        (dst / split).mkdir(parents=True, exist_ok=True)
    for path in files:
        split = "val" if _is_validation(path.name, val_fraction) else "train"
        with Image.open(path) as img:
            crops = _crops_from_photo(img.convert("RGB"), rng, crop, max_crops, short_side)
        for k, c in enumerate(crops):
            buf = io.BytesIO()
            if lossless:
                c.save(buf, format="PNG")
            else:
                c.save(buf, format="JPEG", quality=jpeg_quality, subsampling=0)
            (dst / split / f"{path.stem}_{k}{'.png' if lossless else '.jpg'}").write_bytes(buf.getvalue())
            total_bytes += buf.tell()
            counts[split] += 1
    meta = {
        "format": PACK_FORMAT,
        "source": str(src),
        "photos": len(files),
        "crop": crop,
        "short_side": None if short_side is None else list(short_side),
        "encoding": "png" if lossless else "jpeg",
        "jpeg_quality": None if lossless else jpeg_quality,
        "crops": counts,
        "bytes": total_bytes,
        "seed": seed,
    }
    (dst / "pack.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def load_split(pack: str | os.PathLike, split: str) -> torch.Tensor:
    """All crops of one split as a uint8 tensor (N, 3, CROP, CROP)."""
    files = sorted(f for f in (Path(pack) / split).glob("*") if f.suffix in CROP_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no {split} crops in {pack}")
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


class CropSampler:
    """Random crops with flips from a uint8 image stack kept on the training device.

    All randomness comes from `generator` (a torch.Generator on the CPU), so a run resumes
    bit-for-bit when its state is restored.
    """

    def __init__(self, images: torch.Tensor, size: int, generator: torch.Generator) -> None:
        self.images, self.size, self.generator = images, size, generator

    def sample(self, batch: int, rows: slice = slice(None)) -> torch.Tensor:
        """(batch, 3, size, size) float32 in [0, 1] on the images' device; with `rows`, only those
        rows of the batch are cut (the generator advances as for the whole batch)."""
        n, _, h, w = self.images.shape
        g = self.generator
        idx = torch.randint(0, n, (batch,), generator=g)[rows]
        ys = torch.randint(0, h - self.size + 1, (batch,), generator=g)[rows]
        xs = torch.randint(0, w - self.size + 1, (batch,), generator=g)[rows]
        flips = (torch.rand(batch, 2, generator=g) < 0.5)[rows]
        out = []
        for i, y, x, (fh, fv) in zip(idx.tolist(), ys.tolist(), xs.tolist(), flips.tolist()):
            c = self.images[i, :, y : y + self.size, x : x + self.size]
            if fh:
                c = c.flip(-1)
            if fv:
                c = c.flip(-2)
            out.append(c)
        return torch.stack(out).float().div_(255.0)


def _short_side(text: str) -> tuple[float, float] | None:
    """`--short-side`'s value: 'MIN,MAX' in pixels (0 < MIN <= MAX), or 'none'."""
    import argparse

    if text.lower() == "none":
        return None
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX in pixels or 'none', got {text!r}") from None
    if not 0 < low <= high:
        raise argparse.ArgumentTypeError(f"expected 0 < MIN <= MAX, got {text!r}")
    return low, high


def main(argv: list[str] | None = None) -> None:
    """python -m cca_codec.training.data SOURCE_DIR PACK_DIR: build a training pack."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m cca_codec.training.data", description="Build a training pack from a folder of photographs.")
    p.add_argument("source")
    p.add_argument("out")
    p.add_argument("--crop", type=int, default=PACK_CROP)
    p.add_argument("--jpeg-quality", type=int, default=PACK_JPEG_QUALITY)
    p.add_argument("--max-crops", type=int, default=PACK_MAX_CROPS)
    p.add_argument("--val-fraction", type=float, default=0.03)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lossless", action="store_true", help="store the crops as PNG (about 6x larger) instead of JPEG")
    p.add_argument("--short-side", type=_short_side, default=PACK_SHORT_SIDE, metavar="MIN,MAX",
                   help="downscale photos whose short side exceeds MAX to a random short side in MIN..MAX pixels "
                        "(default 400,600); 'none' keeps them at full size")
    a = p.parse_args(argv)
    meta = build_pack(
        a.source, a.out, crop=a.crop, jpeg_quality=a.jpeg_quality, max_crops=a.max_crops, val_fraction=a.val_fraction,
        seed=a.seed, lossless=a.lossless, short_side=a.short_side,
    )
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
