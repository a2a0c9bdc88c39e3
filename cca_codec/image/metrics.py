"""Image quality and rate measures, as the evaluation protocol defines them.

    python -m cca_codec.image.metrics ORIGINAL DECODED [--cca FILE]

PSNR is computed on 8-bit RGB with MAX = 255; bpp = 8 * file bytes / (W * H) of the original;
MS-SSIM on RGB with data range 255 (pytorch_msssim, of the optional "eval" extra).
SSIMULACRA2 (:func:`ssimulacra2`) is a perceptual score, 100 for identical images, about 90 for
visually lossless, 70 high, 50 medium, 30 low quality, unbounded below.
"""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 arrays of the same shape (inf when identical)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


MS_SSIM_MIN_SIDE = 161
"""Smallest image side (pixels) for which MS-SSIM (5 scales, 11-tap window) is defined."""


def ms_ssim(reference: np.ndarray, decoded: np.ndarray) -> float | None:
    """MS-SSIM of two (H, W, 3) uint8 images on [0, 255] data; None below MS_SSIM_MIN_SIDE pixels a side."""
    if min(reference.shape[:2]) < MS_SSIM_MIN_SIDE:
        return None
    import torch
    from pytorch_msssim import ms_ssim as _pytorch_ms_ssim  # the optional "eval" extra, needed only from here on

    def as_tensor(rgb: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(rgb.astype(np.float32)).permute(2, 0, 1)[None]  # a writable copy

    return float(_pytorch_ms_ssim(as_tensor(reference), as_tensor(decoded), data_range=255.0))


def bits_per_pixel(num_bytes: int, width: int, height: int) -> float:
    """8 * bytes / (width * height)."""
    return 8.0 * num_bytes / (width * height)


SSIMULACRA2_MIN_SIDE = 8
"""Smallest image side (pixels) SSIMULACRA2 is defined for (libjxl's tool refuses smaller images)."""

_SSIMULACRA2_SCALES = 6

# Opsin absorbance matrix (rows: the L, M, S mixtures of linear R, G, B) and bias of JPEG XL's XYB space
# (libjxl lib/jxl/opsin_params.h).
_OPSIN_MATRIX = np.array(
    [
        [0.30, 0.622, 0.078],
        [0.23, 0.692, 0.078],
        [0.24342268924547819, 0.20476744424496821, 1.0 - 0.24342268924547819 - 0.20476744424496821],
    ]
)
_OPSIN_BIAS = 0.0037930732552754493

# Weights of SSIMULACRA 2.1 (libjxl tools/ssimulacra2.cc), indexed [channel X, Y, B][scale 0..5]
# [norm: 1-norm, 4-norm][map: SSIM, artifact, detail loss].
_SSIMULACRA2_WEIGHTS = np.array([
    0.0, 0.0007376606707406586, 0.0, 0.0, 0.0007793481682867309, 0.0,
    0.0, 0.0004371155730107379, 0.0, 1.1041726426657346, 0.00066284834129271, 0.00015231632783718752,
    0.0, 0.0016406437456599754, 0.0, 1.8422455520539298, 11.441172603757666, 0.0,
    0.0007989109436015163, 0.000176816438078653, 0.0, 1.8787594979546387, 10.94906990605142, 0.0,
    0.0007289346991508072, 0.9677937080626833, 0.0, 0.00014003424285435884, 0.9981766977854967, 0.00031949755934435053,
    0.0004550992113792063, 0.0, 0.0, 0.0013648766163243398, 0.0, 0.0,
    0.0, 0.0, 0.0, 7.466890328078848, 0.0, 17.445833984131262,
    0.0006235601634041466, 0.0, 0.0, 6.683678146179332, 0.00037724407979611296, 1.027889937768264,
    225.20515300849274, 0.0, 0.0, 19.213238186143016, 0.0011401524586618361, 0.001237755635509985,
    176.39317598450694, 0.0, 0.0, 24.43300999870476, 0.28520802612117757, 0.0004485436923833408,
    0.0, 0.0, 0.0, 34.77906344483772, 44.835625328877896, 0.0,
    0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
    0.0, 0.0008680556573291698, 0.0, 0.0, 0.0, 0.0,
    0.0, 0.0005313191874358747, 0.0, 0.00016533814161379112, 0.0, 0.0,
    0.0, 0.0, 0.0, 0.0004179171803251336, 0.0017290828234722833, 0.0,
    0.0020827005846636437, 0.0, 0.0, 8.826982764996862, 23.19243343998926, 0.0,
    95.1080498811086, 0.9863978034400682, 0.9834382792465353, 0.0012286405048278493, 171.2667255897307, 0.9807858872435379,
    0.0, 0.0, 0.0, 0.0005130064588990679, 0.0, 0.00010854057858411537,
])


def _recursive_gaussian_taps(sigma: float = 1.5) -> np.ndarray:
    """Impulse response of libjxl's recursive Gaussian (Charalampidis 2016, three truncated cosines).

    The recursion ``o[n] = n2 * (x[n - N - 1] + x[n + N - 1]) - d1 * o[n - 1] - o[n - 2]`` (summed over
    the three cosines) has a finite impulse response of 2N - 1 taps, centred; libjxl runs it with zeros
    outside the image, so a convolution with these taps over a zero-padded image gives the same output.
    SSIMULACRA2 was fitted with this filter; a sampled Gaussian of the same sigma changes scores by
    several points.
    """
    radius = round(3.2795 * sigma + 0.2546)  # "N", eq. (57)
    omega = np.array([1.0, 3.0, 5.0]) * np.pi / (2 * radius)
    p = np.array([1.0, -1.0, 1.0]) / np.tan(0.5 * omega)
    r = np.array([1.0, -1.0, 1.0]) * p * p / np.sin(omega)
    rho = np.exp(-0.5 * sigma * sigma * omega * omega) / radius
    d13, d35, d51 = p[0] * r[1] - r[0] * p[1], p[1] * r[2] - r[1] * p[2], p[2] * r[0] - r[2] * p[0]
    zeta = np.array([d35 / d13, d51 / d13, 1.0])
    gamma = np.array([1.0, radius * radius - sigma * sigma, zeta @ rho])
    beta = np.linalg.solve(np.array([p, r, zeta]), gamma)
    n2, d1 = -beta * np.cos(omega * (radius + 1)), -2.0 * np.cos(omega)
    length = 4 * radius + 1  # an impulse at 2 * radius; the response lies inside
    impulse = np.zeros(length)
    impulse[2 * radius] = 1.0
    out, prev, prev2 = np.zeros(length), np.zeros(3), np.zeros(3)
    for n in range(length):
        left, right = n - radius - 1, n + radius - 1
        total = (impulse[left] if left >= 0 else 0.0) + (impulse[right] if right < length else 0.0)
        prev, prev2 = n2 * total - d1 * prev - prev2, prev
        out[n] = prev.sum()
    return out[radius + 1 : 3 * radius]


_BLUR_TAPS = _recursive_gaussian_taps()


def _blur(planes: np.ndarray) -> np.ndarray:
    """(H, W, C) float32 planes blurred as libjxl's SSIMULACRA2 does (sigma 1.5, zeros outside)."""
    half = len(_BLUR_TAPS) // 2
    h, w = planes.shape[:2]
    padded = np.pad(planes, ((0, 0), (half, half), (0, 0)))
    rows = sum(tap * padded[:, k : k + w] for k, tap in enumerate(_BLUR_TAPS.astype(np.float32)))
    padded = np.pad(rows, ((half, half), (0, 0), (0, 0)))
    return sum(tap * padded[k : k + h] for k, tap in enumerate(_BLUR_TAPS.astype(np.float32)))


def _srgb_to_linear(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 sRGB to float32 linear RGB in [0, 1] (the exact sRGB transfer function)."""
    c = np.arange(256) / 255.0
    table = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)
    return table[rgb]


def _positive_xyb(linear: np.ndarray) -> np.ndarray:
    """(H, W, 3) linear RGB to XYB, shifted and scaled into about [0, 1] (libjxl's MakePositiveXYB)."""
    mixed = np.maximum(linear @ _OPSIN_MATRIX.T.astype(np.float32) + np.float32(_OPSIN_BIAS), 0.0)
    mixed = np.cbrt(mixed) - np.float32(np.cbrt(_OPSIN_BIAS))
    x, y, b = 0.5 * (mixed[..., 0] - mixed[..., 1]), 0.5 * (mixed[..., 0] + mixed[..., 1]), mixed[..., 2]
    return np.stack([14.0 * x + 0.42, y + 0.01, (b - y) + 0.55], axis=-1).astype(np.float32)


def _downsample(linear: np.ndarray) -> np.ndarray:
    """2x2 box average of (H, W, 3); an odd last row or column is repeated (libjxl's Downsample)."""
    h, w = linear.shape[:2]
    padded = np.pad(linear, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return padded.reshape((h + 1) // 2, 2, (w + 1) // 2, 2, 3).mean(axis=(1, 3), dtype=np.float32)


def _norms(error_map: np.ndarray) -> np.ndarray:
    """(H, W, 3) map to its per-channel (1-norm, 4-norm) means, shape (3, 2), in float64."""
    e = error_map.astype(np.float64)
    return np.stack([e.mean(axis=(0, 1)), np.sqrt(np.sqrt((e**4).mean(axis=(0, 1))))], axis=-1)


def _scale_features(img1: np.ndarray, img2: np.ndarray) -> np.ndarray:
    """The error norms of one scale from two (H, W, 3) positive-XYB images, shape (3 channels, 2 norms,
    3 maps: SSIM, artifact, detail loss)."""
    blurred = _blur(np.concatenate([img1 * img1, img2 * img2, img1 * img2, img1, img2], axis=-1))
    s11, s22, s12, mu1, mu2 = np.split(blurred, 5, axis=-1)
    num_m = 1.0 - (mu1 - mu2) ** 2
    num_s = 2.0 * (s12 - mu1 * mu2) + 0.0009
    denom_s = (s11 - mu1 * mu1) + (s22 - mu2 * mu2) + 0.0009
    ssim = np.maximum(1.0 - num_m * num_s / denom_s, 0.0)
    edge = (1.0 + np.abs(img2 - mu2)) / (1.0 + np.abs(img1 - mu1)) - 1.0
    artifact, detail_lost = np.maximum(edge, 0.0), np.maximum(-edge, 0.0)
    return np.stack([_norms(ssim), _norms(artifact), _norms(detail_lost)], axis=-1)


def ssimulacra2(reference: np.ndarray, distorted: np.ndarray) -> float:
    """SSIMULACRA2 score of ``distorted`` against ``reference``, two (H, W, 3) uint8 sRGB arrays.

    SSIMULACRA 2.1 (Cloudinary / libjxl), the perceptual metric JPEG XL and AVIF developers compare
    codecs with: unitless, 100 for identical images, about 90 visually lossless, 70 high, 50 medium,
    30 low quality, and no lower bound (very bad images score below 0). It compares the images in
    JPEG XL's XYB colour space at 6 scales (2x box downsampling in linear RGB), each through an SSIM
    map and two edge maps (ringing/blocking artifacts, lost detail) blurred with sigma 1.5, pools
    each map by its 1- and 4-norms, and maps a weighted sum of the 108 pooled values to the score.

    Our own NumPy port of libjxl's tools/ssimulacra2.cc (float32 maps as there, including its
    recursive Gaussian with zeros outside the image and its rule that a scale is computed while the
    previous scale is at least 8 pixels a side). Checked against the Rust port's reference pair
    (docs/RESULTS.md, *SSIMULACRA2*). Not symmetric: swapping the images changes the score.

    Raises:
        ValueError: the arrays are not (H, W, 3) uint8, differ in shape, or have a side under 8 pixels.
    """
    for name, image in (("reference", reference), ("distorted", distorted)):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"{name} must be an (H, W, 3) uint8 array, got {image.shape} {image.dtype}")
    if reference.shape != distorted.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {distorted.shape}")
    if min(reference.shape[:2]) < SSIMULACRA2_MIN_SIDE:
        raise ValueError(f"SSIMULACRA2 needs at least {SSIMULACRA2_MIN_SIDE}x{SSIMULACRA2_MIN_SIDE} pixels, got {reference.shape[1]}x{reference.shape[0]}")
    linear1, linear2 = _srgb_to_linear(reference), _srgb_to_linear(distorted)
    features = []
    for scale in range(_SSIMULACRA2_SCALES):
        if min(linear1.shape[:2]) < SSIMULACRA2_MIN_SIDE:
            break
        if scale > 0:
            linear1, linear2 = _downsample(linear1), _downsample(linear2)
        features.append(_scale_features(_positive_xyb(linear1), _positive_xyb(linear2)))
    # libjxl reads the weights in (channel, scale, norm, map) order over the scales computed
    pooled = np.stack(features, axis=1).ravel()
    total = 0.9562382616834844 * float(_SSIMULACRA2_WEIGHTS[: pooled.size] @ np.abs(pooled))
    total = 2.326765642916932 * total - 0.020884521182843837 * total**2 + 6.248496625763138e-05 * total**3
    return 100.0 - 10.0 * total**0.6276336467831387 if total > 0 else 100.0


@dataclass(frozen=True)
class Fidelity:
    """How close a decoding is to its original: PSNR-RGB in dB, MS-SSIM (None under
    MS_SSIM_MIN_SIDE pixels a side) and SSIMULACRA2 (None under SSIMULACRA2_MIN_SIDE)."""

    psnr: float
    ms_ssim: float | None
    ssimulacra2: float | None


def fidelity(reference: np.ndarray, decoded: np.ndarray) -> Fidelity:
    """Every fidelity measure of ``decoded`` against ``reference``, (H, W, 3) uint8 arrays of one shape."""
    score = ssimulacra2(reference, decoded) if min(reference.shape[:2]) >= SSIMULACRA2_MIN_SIDE else None
    return Fidelity(psnr(reference, decoded), ms_ssim(reference, decoded), score)


def _rgb(path: str) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m cca_codec.image.metrics", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("original")
    p.add_argument("decoded")
    p.add_argument("--cca", help="the compressed file, for bpp")
    a = p.parse_args(argv)
    ref, out = _rgb(a.original), _rgb(a.decoded)
    line = f"PSNR-RGB {psnr(ref, out):.2f} dB"
    if min(ref.shape[:2]) >= SSIMULACRA2_MIN_SIDE:
        line += f", SSIMULACRA2 {ssimulacra2(ref, out):.2f}"
    if a.cca:
        line += f", {bits_per_pixel(os.path.getsize(a.cca), ref.shape[1], ref.shape[0]):.3f} bpp"
    print(f"{a.decoded}: {line}")


if __name__ == "__main__":
    main()
