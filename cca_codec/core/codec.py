"""Encoding and decoding images: the network driven step by step, with real range coding.

Numeric policy: the analysis and synthesis transforms run in float32, or in bf16 where the CPU
computes it natively (cca_codec.core.precision); the entropy-parameter path (hyper-synthesis, slice networks, checkerboard context, LRP, gains on z)
runs in float64, and table indices are chosen in float64, so an encoder and a decoder on
different devices or thread counts pick the same tables (see docs/FORMAT.md).

Coding order of a tile's stream: z (all channels), then for each slice either one step
(grouped) or two (checkerboard: anchors, then non-anchors), each step's symbols grouped by
table as `SymbolEncoder` describes. Symbols are in (channel, row, column) order within a step.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from cca_codec.base.errors import FormatError, ModelError, UsageError
from cca_codec.base.timing import (
    CONTAINER_READ,
    CONTAINER_WRITE,
    G_A,
    G_S,
    HYPERPRIOR,
    NO_TIMER,
    RANGE_CODING,
    REFINE,
    StageTimer,
    entropy_step,
)
from cca_codec.entropy.coder import CODER_VERSION, SymbolDecoder, SymbolEncoder
from cca_codec.entropy.tables import CDFTables, ScaleTable
from cca_codec.format.container import DEFAULT_MAX_PIXELS, read_container, write_container
from cca_codec.format.contents import CONTEXT_MODES, Container, Header, TilePayload
from cca_codec.format.tiling import BlendAssembler, TileLayout, choose_layout
from cca_codec.image.io import DecodedImage, SourceImage
from cca_codec.nn.context import Folds, anchor_mask
from cca_codec.nn.model import CCAModel

from .checkpoint import LoadedModel, QualityNetwork, earlier_weights, load_model
from .device import resolve_device
from .precision import layout_transforms, resolve_precision, transform_context, transform_input
from .refine import Schedule, TableRate, effort_schedule, refine_latents

ENTROPY_DTYPE = torch.float64

# code_step(slice index, mean, scale, positions mask or None) -> symbols (float64, same shape as mean)
CodeStep = Callable[[int, Tensor, Tensor, "Tensor | None"], Tensor]


@dataclass
class _Coding:
    """A network prepared for coding on one device and transform precision, with its frozen tables."""

    net: CCAModel
    device: torch.device
    precision: str
    z_tables: CDFTables
    y_tables: CDFTables
    scale_table: ScaleTable
    folds: Folds

    @functools.cached_property
    def z_rate(self) -> TableRate:
        """The bits of z's symbols for latent refinement (built on first use: effort 1 needs none)."""
        return TableRate(self.z_tables, self.device)


def _prepare(model: LoadedModel, device: torch.device, chosen: QualityNetwork | None = None, precision: str = "auto") -> _Coding:
    """Move a network of `model` (`chosen`, default: the default quality's) to `device`: transforms
    in float32 laid out for `precision`, the entropy path in float64 with its stacks folded into
    the convs that read them (`ChannelContextModel.fold`); once per network, cached on the model
    by weights hash."""
    if chosen is None:
        chosen = model.at_quality(model.default_quality)
    precision = resolve_precision(precision, device)
    cache: dict[bytes, _Coding] = getattr(model, "_coding", None) or {}
    cached = cache.get(chosen.weights_sha256)
    if cached is not None and (cached.device, cached.precision) == (device, precision):
        return cached
    net = chosen.net.eval()
    net.to(device)
    for module in (net.h_mean_s, net.h_scale_s, net.context):
        module.to(ENTROPY_DTYPE)
    layout_transforms((net.g_a, net.g_s), precision)
    coding = _Coding(
        net=net,
        device=device,
        precision=precision,
        z_tables=CDFTables.from_module(net.entropy_bottleneck),
        y_tables=CDFTables.from_module(net.gaussian_conditional),
        scale_table=ScaleTable(net.scale_bounds),
        folds=net.context.fold(),
    )
    cache[chosen.weights_sha256] = coding
    model._coding = cache  # type: ignore[attr-defined]
    return coding


def check_context(net: CCAModel, context: str) -> str:
    """`context` if `net` can code in that mode, else a UsageError naming the modes it can."""
    if context not in CONTEXT_MODES:
        raise UsageError(f"unknown context mode {context!r}; use {' or '.join(CONTEXT_MODES)}")
    if context == "checkerboard" and net.context.spatial is None:
        raise UsageError(f"model {net.cfg.name!r} has no spatial context; use --context grouped")
    return context


def default_context(model: LoadedModel) -> str:
    """checkerboard when the network has a spatial context, else grouped."""
    return "checkerboard" if model.net.context.spatial is not None else "grouped"


def _gains(net: CCAModel, quality: float, device: torch.device) -> tuple[Tensor, ...]:
    """Gains at `quality`, computed on the CPU in float64 (identical on every machine)."""
    gains = net.gains(torch.tensor([quality], dtype=torch.float64))
    return tuple(g.to(device) for g in gains)


def _walk_slices(
    c: _Coding, latent_means: Tensor, latent_scales: Tensor, checkerboard: bool, code_step: CodeStep, timer: StageTimer = NO_TIMER
) -> Tensor:
    """Run the context model slice by slice; `code_step` codes (encoder) or decodes (decoder)
    the symbols of each step. Returns y_hat (1, M, h, w) in float64. `timer` gets the
    stages `entropy parameters <step>` (a slice's LRP in its last step) and `range coding`."""
    ctx = c.net.context
    y_hats: list[Tensor] = []
    anchors = anchor_mask(*latent_means.shape[-2:], device=latent_means.device)
    code = timer.wrap(RANGE_CODING, code_step)
    steps_per_slice = 2 if checkerboard else 1
    for i in range(len(ctx.sizes)):
        step = steps_per_slice * i + 1
        with timer.stage(entropy_step(step)):
            mean_feat, scale_feat = ctx.stack_features(i, latent_means, latent_scales, y_hats, c.folds)
            head_in = ctx.head_inputs(i, mean_feat, scale_feat, c.folds)
            mu, scale = ctx.parameters(i, head_in)
        if checkerboard:
            q_anchor = code(i, mu, scale, anchors)
            with timer.stage(entropy_step(step + 1)):
                spatial = ctx.spatial_context(i, q_anchor + mu)
                mu_n, scale_n = ctx.parameters(i, head_in, spatial)
            q_rest = code(i, mu_n, scale_n, ~anchors)
            y_hat = torch.where(anchors, q_anchor + mu, q_rest + mu_n)
        else:
            y_hat = code(i, mu, scale, None) + mu
        with timer.stage(entropy_step(step + steps_per_slice - 1)):
            y_hats.append(ctx.refine(i, mean_feat, y_hat, c.folds))
    return torch.cat(y_hats, dim=1)


def _select(t: Tensor, positions: Tensor | None) -> Tensor:
    """Flatten (1, C, h, w) to the step's values in (channel, row, column) order."""
    if positions is None:
        return t.reshape(-1)
    return t[0][positions[0].expand_as(t[0])]


def _place(values: Tensor, like: Tensor, positions: Tensor | None) -> Tensor:
    """Inverse of _select: a (1, C, h, w) tensor holding `values` at the positions, 0 elsewhere."""
    if positions is None:
        return values.reshape(like.shape)
    out = torch.zeros_like(like)
    out[0][positions[0].expand_as(like[0])] = values
    return out


def _z_symbols_layout(z_shape: torch.Size) -> np.ndarray:
    """Table index (= channel) of every z symbol in (channel, row, column) order."""
    _, ch, h, w = z_shape
    return np.repeat(np.arange(ch, dtype=np.int64), h * w)


@dataclass(frozen=True)
class Refinement:
    """Latent refinement for an effort above 1 (cca_codec.core.refine): its schedule, the quality's lambda,
    and the weight of each pixel of the padded tile in the image, (1, 1, H, W) (see refine_latents)."""

    schedule: Schedule
    lam: float
    pixel_weights: Tensor
    progress: Callable[[int], None] | None = None


def encode_tile(
    c: _Coding, x: Tensor, gain_quality: float, checkerboard: bool, timer: StageTimer = NO_TIMER,
    refinement: Refinement | None = None,
) -> tuple[bytes, int]:
    """x: (1, 3, H, W) float32 in [0, 1], H and W multiples of 64 -> (stream, symbols CRC-32).
    `gain_quality`: where the network's gains are evaluated (QualityNetwork.gain_quality).
    `refinement`: optimize y for this tile before coding it (z as g_a's y gives it).
    `timer` gets the stages g_a, hyperprior, refine and those of `_walk_slices`."""
    net, dev = c.net, c.device
    g_y, g_y_inv, g_z, g_z_inv = _gains(net, gain_quality, dev)
    enc = SymbolEncoder()
    with torch.inference_mode():
        with timer.stage(G_A), transform_context(c.precision, dev, synthesis=False):
            y = net.g_a(transform_input(x.to(dev), c.precision)).contiguous() * g_y.float()
        with timer.stage(HYPERPRIOR):
            z = (net.h_a(y) * g_z.float()).to(ENTROPY_DTYPE)
            if not (torch.isfinite(y).all() and torch.isfinite(z).all()):
                raise ModelError("the network produced non-finite latents (broken weights?)")
    if refinement is not None:
        with timer.stage(REFINE):
            y, z = refine_latents(
                net, x.to(dev), y, z, g_y_inv, g_z_inv, c.z_rate, refinement.lam, checkerboard, refinement.schedule,
                c.precision, refinement.progress, pixel_weights=refinement.pixel_weights,
            )
    with torch.inference_mode():
        with timer.stage(HYPERPRIOR):
            medians = net.entropy_bottleneck._get_medians().detach().to(dev, ENTROPY_DTYPE)
            z_sym = torch.round(z - medians)
            enc.encode(z_sym.cpu().numpy().reshape(-1), _z_symbols_layout(z.shape), c.z_tables)
            latent_means, latent_scales = net.hyper_parameters(z_sym + medians, g_z_inv)
        y64 = y.to(ENTROPY_DTYPE)
        offsets = np.cumsum([0, *net.context.sizes])

        def code_step(i: int, mu: Tensor, scale: Tensor, positions: Tensor | None) -> Tensor:
            q = torch.round(y64[:, offsets[i] : offsets[i + 1]] - mu)
            enc.encode(
                _select(q, positions).cpu().numpy(),
                c.scale_table.index(_select(scale, positions)),
                c.y_tables,
            )
            return q if positions is None else q * positions

        _walk_slices(c, latent_means, latent_scales, checkerboard, code_step, timer)
    return enc.finish(), enc.crc32


def decode_tile(
    c: _Coding, stream: bytes, crc32: int, shape: tuple[int, int], gain_quality: float, checkerboard: bool, timer: StageTimer = NO_TIMER
) -> Tensor:
    """Decode one tile's stream to x_hat (1, 3, H, W) float32 in [0, 1] (H, W multiples of 64).
    `timer` gets the stages hyperprior, those of `_walk_slices`, and g_s."""
    net, dev = c.net, c.device
    _, g_y_inv, _, g_z_inv = _gains(net, gain_quality, dev)
    dec = SymbolDecoder(stream)
    h, w = shape[0] // 64, shape[1] // 64
    z_shape = torch.Size((1, net.cfg.hyper_channels, h, w))
    with torch.inference_mode():
        with timer.stage(HYPERPRIOR):
            medians = net.entropy_bottleneck._get_medians().detach().to(dev, ENTROPY_DTYPE)
            z_sym = dec.decode(_z_symbols_layout(z_shape), c.z_tables)
            z_hat = torch.from_numpy(z_sym).to(dev, ENTROPY_DTYPE).reshape(z_shape) + medians
            latent_means, latent_scales = net.hyper_parameters(z_hat, g_z_inv)

        def code_step(i: int, mu: Tensor, scale: Tensor, positions: Tensor | None) -> Tensor:
            try:
                table_index = c.scale_table.index(_select(scale, positions))
            except ValueError as exc:  # a non-finite scale: only corrupt symbols can lead there
                raise FormatError(f"corrupt payload: {exc}") from None
            values = dec.decode(table_index, c.y_tables)
            return _place(torch.from_numpy(values).to(dev, ENTROPY_DTYPE), mu, positions)

        y_hat = _walk_slices(c, latent_means, latent_scales, checkerboard, code_step, timer)
        if dec.crc32 != crc32:
            raise FormatError("decoded symbols fail their CRC-32: corrupt file, or a different model or coder")
        with timer.stage(G_S), transform_context(c.precision, dev, synthesis=True):
            y_in = transform_input(y_hat.float() * g_y_inv.float(), c.precision)
            return net.g_s(y_in).contiguous().clamp_(0, 1)


def _to_tensor(rgb: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float().div_(255.0)


def _to_hwc(x: Tensor, height: int, width: int) -> np.ndarray:
    """The top-left height x width pixels of (1, 3, H, W) as (height, width, 3) float32 in [0, 1]."""
    return x[0, :, :height, :width].permute(1, 2, 0).float().cpu().numpy()


def _span(region: tuple[slice, slice]) -> tuple[int, int]:
    """(height, width) of a region of the image."""
    rows, cols = region
    return rows.stop - rows.start, cols.stop - cols.start


def _pixel_weights(layout: TileLayout, index: int, padded: torch.Size) -> Tensor:
    """(1, 1, H, W) float32: tile ``index``'s blending weights over its extent, 0 on the padding to ``padded``."""
    rows, cols = layout.weights(index)
    weights = torch.zeros((1, 1, *padded), dtype=torch.float32)
    weights[0, 0, : rows.size, : cols.size] = torch.from_numpy(np.outer(rows, cols))
    return weights


def _padded(size: tuple[int, int], align: int) -> tuple[int, int]:
    """`size` rounded up to multiples of `align`."""
    return size[0] + (-size[0]) % align, size[1] + (-size[1]) % align


def encode_image(
    image: SourceImage,
    model: LoadedModel,
    *,
    quality: float | None = None,
    context: str | None = None,
    device: str = "auto",
    tile: int | None = None,
    precision: str = "auto",
    effort: int = 1,
    progress: Callable[[int, int], None] | None = None,
    timer: StageTimer = NO_TIMER,
) -> bytes:
    """Compress an image into `.cca` bytes.

    `effort` (1..9): 1 codes g_a's latents; higher efforts optimize them for the image first
    (cca_codec.core.refine), slower but smaller for the same quality; any effort decodes with the same
    decoder. `progress(done, total)` is called after each refinement step, counted over all tiles.
    `tile`: core tile size in pixels (a multiple of 64), 0 for one tile, None to tile images
    over `tiling.AUTO_TILE_PIXELS` automatically. Tiles are coded one at a time, each over its
    core plus an overlap (see cca_codec.format.tiling), so memory is bounded by the tile size.
    `precision`: how g_a runs (cca_codec.core.precision: auto, bf16, fp32-fast or fp32).
    `timer` gets the coding stages and container write (see cca_codec.base.timing).
    """
    q = model.check_quality(model.default_quality if quality is None else quality)
    chosen = model.at_quality(q)
    mode = check_context(chosen.net, context or default_context(model))
    align = CCAModel.alignment
    try:
        layout = choose_layout(image.height, image.width, tile, align)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    schedule = effort_schedule(effort)
    c = _prepare(model, resolve_device(device), chosen, precision)
    tiles = []
    for index in range(layout.count):
        region = layout.extent(index)
        x = CCAModel.pad_to_alignment(_to_tensor(image.rgb[region]))
        refinement = None
        if schedule is not None:
            done, total = index * schedule.steps, layout.count * schedule.steps
            report = None if progress is None else (lambda step, done=done: progress(done + step + 1, total))
            refinement = Refinement(schedule, model.lam(q), _pixel_weights(layout, index, x.shape[-2:]), report)
        stream, crc = encode_tile(c, x, chosen.gain_quality, mode == "checkerboard", timer, refinement)
        tiles.append(TilePayload(index, crc, stream))
    header = Header(
        width=image.width,
        height=image.height,
        color_mode=image.color_mode,
        bit_depth=image.bit_depth,
        color_space="icc" if image.icc_profile else "srgb",
        context_mode=mode,
        quality=q,
        lam=model.lam(q),
        tile_width=layout.tile_width,
        tile_height=layout.tile_height,
        tile_overlap=layout.overlap,
        latent_align=align,
        coder_version=CODER_VERSION,
        model_id=model.model_id,
        weights_sha256=chosen.weights_sha256,
    )
    with timer.stage(CONTAINER_WRITE):
        return write_container(
            Container(
                header=header,
                tiles=tuple(tiles),
                icc_profile=image.icc_profile,
                exif=image.exif,
                alpha=None if image.alpha is None else np.ascontiguousarray(image.alpha, dtype=np.uint8).tobytes(),
            )
        )


def check_model_matches(header: Header, model: LoadedModel) -> None:
    """Refuse to decode with weights other than the ones the file was encoded with (for a model
    with per-quality weights: those of the file's quality)."""
    loaded = model.weights_sha256_at(header.quality)
    if header.weights_sha256 != loaded:
        have = f"weights are {loaded.hex()[:12]}" if loaded is not None else f"has no weights for quality {header.quality:g}"
        earlier = earlier_weights(model.directory).get(header.weights_sha256.hex()) if model.directory else None
        which = (
            f" (its weights until {earlier['replaced']}, {earlier['total_steps']:,} training steps)" if earlier and header.model_id == model.model_id else ""
        )
        raise ModelError(
            f"file was encoded with model {header.model_id!r} weights "
            f"{header.weights_sha256.hex()[:12]}{which}, but the loaded {model.model_id!r} {have}; "
            "decode it with the model directory of those weights (--model DIR)"
        )


def decode_image(
    data: bytes,
    model: LoadedModel | None = None,
    *,
    device: str = "auto",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    precision: str = "auto",
    timer: StageTimer = NO_TIMER,
) -> DecodedImage:
    """Decompress `.cca` bytes. Without `model`, the model named in the file is loaded.
    `timer` gets container read and the decoding stages (see cca_codec.base.timing).

    `precision`: how g_s runs (cca_codec.core.precision: auto, bf16, fp32-fast or fp32).
    `max_pixels` bounds width * height (checked from the header before anything is allocated).
    Tiles are decoded one at a time and blended into a uint8 image.
    """
    with timer.stage(CONTAINER_READ):
        container = read_container(data, max_pixels=max_pixels)
    h = container.header
    if model is None:
        model = load_model(h.model_id)
    check_model_matches(h, model)
    if h.latent_align != CCAModel.alignment:
        raise FormatError(f"unsupported latent alignment {h.latent_align}")
    try:
        chosen = model.at_quality(h.quality)
    except UsageError as exc:
        raise FormatError(f"the file's quality does not fit model {model.model_id!r}: {exc}") from None
    if h.context_mode == "checkerboard" and model.net.context.spatial is None:
        raise ModelError(f"file uses the checkerboard context, which model {model.model_id!r} does not have")
    c = _prepare(model, resolve_device(device), chosen, precision)
    layout = TileLayout.from_header(h)
    assembler = BlendAssembler(layout)
    for tile in container.tiles:
        size = _span(layout.extent(tile.tile_index))
        shape = _padded(size, h.latent_align)
        x_hat = decode_tile(c, tile.stream, tile.symbols_crc32, shape, chosen.gain_quality, h.context_mode == "checkerboard", timer)
        assembler.add(tile.tile_index, _to_hwc(x_hat, *size))
        del x_hat
    rgb = assembler.finish()
    alpha = None
    if container.alpha is not None:
        alpha = np.frombuffer(container.alpha, dtype=np.uint8).reshape(h.height, h.width).copy()
    return DecodedImage(rgb=rgb, color_mode=h.color_mode, alpha=alpha, icc_profile=container.icc_profile, exif=container.exif)
