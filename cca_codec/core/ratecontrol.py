"""Rate control: the quality that gives a target bpp, file size or PSNR, found on real encodings.

A model with gains codes at any quality in 1..N; the search runs over a grid of steps of
``QUALITY_STEP`` (a model with one network per quality: over its listed qualities). Rate and
PSNR rise with quality, so finding the target is a root search on that grid, each probe a real
encoding (and, for a PSNR target, its real decoding):

1. from the model's default quality, one step with an assumed slope, then secant steps
   (extrapolating), until the target is bracketed or an end of the quality range is reached;
2. inside the bracket, false position (the secant between its ends) in its Illinois variant,
   which halves the weight of an end kept twice in a row.

3. PSNR (and, on small images, file size) is not monotone at fine steps: on a 96x128 crop it
   jitters by about 0.1 dB between neighbouring qualities. When the bracket has closed on two
   neighbours that both miss, up to ``NEIGHBOUR_PROBES`` more probes try the nearest unprobed
   qualities on either side of that crossing, where the trend is still at the target.

The search stops at the first probe within the tolerance (``RELATIVE_TOLERANCE`` of a bpp or
size target, ``PSNR_TOLERANCE_DB`` of a PSNR target); when the neighbours are spent too (then
the probe closest to the target); or at an end of the range that still misses the target
(that end, with a message saying so). Rates are searched on log(rate), PSNR in dB: both are
close to linear in quality. Every probe keeps its file: no quality is encoded twice for an
image, and the chosen file is the probe's own bytes.

At an encoder effort above 1 every probe refines the latents (cca_codec.core.refine: tens of seconds
where effort 1 takes one), so a *pilot* search at effort 1 first finds the quality for the target,
and the search at the effort starts from there with the slope the pilot measured. Refinement moves
a file's rate and PSNR a little at a given quality, so that first refined probe usually meets the
target or lies next to it (docs/RESULTS.md, *Rate control at higher efforts*).

    result = encode_to_target(load_image("photo.png"), load_model(), Target("bpp", 0.5))
    result.data, result.quality, result.achieved, result.message
"""
from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cca_codec.base.errors import UsageError
from cca_codec.image.io import SourceImage
from cca_codec.image.metrics import bits_per_pixel, psnr

from .checkpoint import LoadedModel
from .codec import decode_image, encode_image
from .refine import effort_schedule

TARGET_KINDS = ("bpp", "psnr", "size")
"""What a target can name: bits per pixel of the file, PSNR-RGB in dB, file size in bytes."""
RELATIVE_TOLERANCE = 0.02
"""A bpp or size target is met within 2 % of its value."""
PSNR_TOLERANCE_DB = 0.05
"""A PSNR target is met within 0.05 dB."""
QUALITY_STEP = 0.01
"""Spacing of the qualities searched for a model with gains (fractional qualities)."""
NEIGHBOUR_PROBES = 6
"""Probes spent on the neighbours of a closed bracket whose two ends both miss the target."""

WITHIN = "within_tolerance"
CLOSEST = "closest"
LOWEST = "lowest_quality"
HIGHEST = "highest_quality"
STATUSES = (WITHIN, CLOSEST, LOWEST, HIGHEST)
"""How a search ended: met the target; the closest grid quality, out of tolerance; range end."""

# The first step assumes this slope, in searched units (log rate, dB) per unit of quality (the
# shipped model: about 0.25 and 0.4-0.9); later steps use the slopes measured.
_PRIOR_SLOPE = {"bpp": 0.25, "size": 0.25, "psnr": 0.5}
_LABELS = {"bpp": "bpp", "psnr": "PSNR", "size": "size"}

Probe = Callable[[int], tuple[float, bool]]
"""probe(grid index) -> (signed error in searched units, within tolerance)."""


@dataclass(frozen=True)
class Target:
    """A rate target: ``kind`` one of TARGET_KINDS, ``value`` bpp, dB or bytes (a whole number).

    Raises:
        UsageError: an unknown kind, or a value that is not a positive finite number.
    """

    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind not in TARGET_KINDS:
            raise UsageError(f"unknown rate target {self.kind!r}; use one of {', '.join(TARGET_KINDS)}")
        value = self.value
        good = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
        if self.kind == "size":
            good = good and float(value).is_integer()
        if not good:
            what = "a positive whole number of bytes" if self.kind == "size" else "a positive number"
            raise UsageError(f"target {_LABELS[self.kind]} must be {what}, got {value!r}")
        object.__setattr__(self, "value", float(value))

    @classmethod
    def from_options(
        cls, *, bpp: float | None = None, psnr: float | None = None, size: int | None = None, quality: float | None = None
    ) -> Target | None:
        """The one target among ``bpp``, ``psnr`` and ``size`` that is not None (None if none is).

        Raises:
            UsageError: more than one target, a target together with a ``quality``, or a bad value.
        """
        given = [(kind, value) for kind, value in zip(TARGET_KINDS, (bpp, psnr, size)) if value is not None]
        if not given:
            return None
        if len(given) > 1:
            names = " and ".join(_LABELS[kind] for kind, _ in given)
            raise UsageError(f"give one rate target (bpp, PSNR or size), not {names}")
        if quality is not None:
            raise UsageError("a rate target chooses the quality itself: give a quality or a target, not both")
        return cls(*given[0])

    def describe(self, achieved: float | None = None) -> str:
        """The target with its unit (``0.6 bpp``, ``28.5 dB``, ``40000 bytes``), or what was
        ``achieved`` in the same unit (``0.602 bpp``, ``28.47 dB``)."""
        if self.kind == "size":
            return f"{round(self.value if achieved is None else achieved)} bytes"
        unit = "bpp" if self.kind == "bpp" else "dB"
        if achieved is None:
            return f"{self.value:g} {unit}"
        return f"{achieved:.3f} {unit}" if self.kind == "bpp" else f"{achieved:.2f} {unit}"

    @property
    def tolerance(self) -> str:
        """The tolerance in words: ``2 %`` or ``0.05 dB``."""
        return f"{PSNR_TOLERANCE_DB:g} dB" if self.kind == "psnr" else f"{100 * RELATIVE_TOLERANCE:g} %"

    def achieved(self, trial: Trial) -> float:
        """What ``trial`` gives in the target's unit."""
        if self.kind == "bpp":
            return trial.bpp
        if self.kind == "size":
            return float(len(trial.data))
        assert trial.psnr is not None, "a PSNR target's trials are decoded"
        return trial.psnr

    def error(self, achieved: float) -> float:
        """Signed distance from the target in searched units: log ratio for rates, dB for PSNR."""
        return achieved - self.value if self.kind == "psnr" else math.log(achieved / self.value)

    def within(self, achieved: float) -> bool:
        """Whether ``achieved`` meets the target within its tolerance."""
        if self.kind == "psnr":
            return abs(achieved - self.value) <= PSNR_TOLERANCE_DB
        return abs(achieved / self.value - 1) <= RELATIVE_TOLERANCE


@dataclass(frozen=True)
class Trial:
    """One probe of the search: the file coded at ``quality``, its bpp, and its decoded PSNR
    (measured for PSNR targets only, else None)."""

    quality: float
    data: bytes
    bpp: float
    psnr: float | None


@dataclass(frozen=True)
class RateResult:
    """The outcome of :func:`encode_to_target`.

    Attributes:
        target: what was asked for.
        status: one of STATUSES.
        trial: the chosen probe (its ``data`` is the file).
        trials: every probe at ``effort`` in search order; ``len(trials)`` such encodes were run.
        effort: the encoder effort of the probes in ``trials``.
        pilot: the probes of the pilot search at effort 1 that came first (none at effort 1).
    """

    target: Target
    status: str
    trial: Trial
    trials: tuple[Trial, ...]
    effort: int = 1
    pilot: tuple[Trial, ...] = ()

    @property
    def data(self) -> bytes:
        """The chosen ``.cca`` file."""
        return self.trial.data

    @property
    def quality(self) -> float:
        """The quality chosen."""
        return self.trial.quality

    @property
    def achieved(self) -> float:
        """What the chosen file gives, in the target's unit."""
        return self.target.achieved(self.trial)

    @property
    def met(self) -> bool:
        """Whether the target was met within its tolerance."""
        return self.status == WITHIN

    @property
    def message(self) -> str:
        """One line saying what was chosen and how well it meets the target."""
        t, got = self.target, self.target.describe(self.achieved)
        encodes = _count(len(self.trials), "encode")
        if self.effort > 1:
            encodes += f" at effort {self.effort}"
            if self.pilot:
                encodes += f" after {_count(len(self.pilot), 'pilot encode')} at effort 1"
        if self.status == WITHIN:
            return f"quality {self.quality:g} gives {got} for a target of {t.describe()} (within {t.tolerance}), {encodes}"
        if self.status == CLOSEST:
            return (
                f"quality {self.quality:g} gives {got}, the closest of the qualities tried to the target of "
                f"{t.describe()} (none within {t.tolerance}), {encodes}"
            )
        end = "lowest" if self.status == LOWEST else "highest"
        return f"target {t.describe()} is out of the model's range: its {end} quality, {self.quality:g}, gives {got}, {encodes}"

    def to_dict(self) -> dict:
        """The result for JSON output (the file bytes left out)."""
        return {
            "target": self.target.kind,
            "value": self.target.value,
            "achieved": self.achieved,
            "tolerance": self.target.tolerance,
            "status": self.status,
            "quality": self.quality,
            "encodes": len(self.trials),
            "tried": [[trial.quality, self.target.achieved(trial)] for trial in self.trials],
            "effort": self.effort,
            "pilot_encodes": len(self.pilot),
            "pilot_tried": [[trial.quality, self.target.achieved(trial)] for trial in self.pilot],
            "message": self.message,
        }


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def encode_to_target(
    image: SourceImage,
    model: LoadedModel,
    target: Target,
    *,
    context: str | None = None,
    device: str = "auto",
    tile: int | None = None,
    precision: str = "auto",
    effort: int = 1,
    pilot: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> RateResult:
    """Encode ``image`` at the quality that meets ``target`` (see the module's description).

    ``context``, ``device``, ``tile``, ``precision``, ``effort`` and ``progress`` are passed to
    :func:`cca_codec.core.codec.encode_image` (and the device and precision to the decoder, for PSNR targets):
    every probe is a real encoding, the chosen one at ``effort``. Above effort 1 a pilot search at
    effort 1 comes first unless ``pilot`` is False (then every probe is at ``effort``, from the
    default quality). A target out of the model's reach is not an error: the result is the nearest
    end of the quality range, with ``status`` saying so.

    Raises:
        UsageError: an effort outside 1..9 (before anything is encoded).
    """
    effort_schedule(effort)
    qualities = searched_qualities(model)
    coding = {"context": context, "device": device, "tile": tile, "precision": precision}
    start, slope, pilot_trials = _nearest(qualities, model.default_quality), _PRIOR_SLOPE[target.kind], ()
    if effort > 1 and pilot:
        index, _, pilot_trials, errors = _search(image, model, target, qualities, start, slope, coding)
        start, slope = index, _pilot_slope(qualities, errors, index) or slope
    index, status, trials, _ = _search(image, model, target, qualities, start, slope, coding, effort, progress)
    chosen = next(trial for trial in trials if trial.quality == qualities[index])
    return RateResult(target, status, chosen, trials, effort, pilot_trials)


def _search(
    image: SourceImage, model: LoadedModel, target: Target, qualities: list[float], start: int, slope: float,
    coding: dict, effort: int = 1, progress: Callable[[int, int], None] | None = None,
) -> tuple[int, str, tuple[Trial, ...], dict[int, float]]:
    """:func:`search_grid` over real encodings at ``effort`` from grid index ``start``: (index, status,
    probes, each probed grid index's signed error)."""
    trials: list[Trial] = []
    errors: dict[int, float] = {}

    def probe(index: int) -> tuple[float, bool]:
        data = encode_image(image, model, quality=qualities[index], effort=effort, progress=progress, **coding)
        fidelity = _decoded_psnr(image, data, model, coding["device"], coding["precision"]) if target.kind == "psnr" else None
        trials.append(Trial(qualities[index], data, bits_per_pixel(len(data), image.width, image.height), fidelity))
        achieved = target.achieved(trials[-1])
        errors[index] = target.error(achieved)
        return errors[index], target.within(achieved)

    index, status = search_grid(probe, qualities, start, slope)
    return index, status, tuple(trials), errors


def _pilot_slope(qualities: Sequence[float], errors: dict[int, float], index: int) -> float:
    """The secant slope between the pilot's answer ``index`` and the probe nearest it (0 with a single
    probe, or a slope that is not positive)."""
    others = [i for i in errors if i != index]
    if not others:
        return 0.0
    nearest = min(others, key=lambda i: abs(i - index))
    return max(_slope(qualities, errors, nearest, index), 0.0)


def searched_qualities(model: LoadedModel) -> list[float]:
    """The qualities rate control chooses from, ascending: 1..N in steps of QUALITY_STEP, or the
    listed qualities of a model with one network per quality."""
    if model.per_quality:
        return [float(q) for q in sorted(model.per_quality)]
    steps = round((len(model.qualities) - 1) / QUALITY_STEP)
    return [round(1 + k * QUALITY_STEP, 2) for k in range(steps + 1)]


def search_grid(probe: Probe, qualities: Sequence[float], start: int, prior_slope: float) -> tuple[int, str]:
    """Find the grid index where ``probe`` meets its target; return ``(index, status)``.

    ``probe(i)`` gives the signed error at ``qualities[i]`` (rising with quality) and whether it
    is within tolerance; it is called at most once per index. ``prior_slope`` (error per unit of
    quality) steers the first step from ``start``.
    """
    errors: dict[int, float] = {}

    def met(index: int) -> bool:
        errors[index], within = probe(index)
        return within

    current, previous = start, None
    if met(current):
        return current, WITHIN
    while True:  # walk towards the target until it is bracketed
        error = errors[current]
        edge = 0 if error > 0 else len(qualities) - 1
        if current == edge:
            return current, LOWEST if error > 0 else HIGHEST
        slope = prior_slope if previous is None else _slope(qualities, errors, previous, current)
        guess = qualities[current] - error / slope if slope > 0 else qualities[edge]
        previous, current = current, _step_towards(qualities, guess, current, edge)
        if met(current):
            return current, WITHIN
        if (errors[current] > 0) != (error > 0):
            break
    low, high = sorted((previous, current))  # errors[low] < 0 < errors[high]
    return _bracketed(met, errors, qualities, low, high)


def _bracketed(met: Callable[[int], bool], errors: dict[int, float], qualities: Sequence[float], low: int, high: int) -> tuple[int, str]:
    """The Illinois variant of false position inside the bracket ``low < high`` (``errors[low] < 0 <
    errors[high]``): the end kept twice in a row has its error halved for the next secant."""
    weight_low, weight_high, kept = errors[low], errors[high], 0  # kept: -1 low moved last, +1 high
    while high - low > 1:
        fraction = -weight_low / (weight_high - weight_low)
        if not 0 < fraction < 1:  # an infinite error (PSNR of an exact decoding)
            fraction = 0.5
        guess = qualities[low] + fraction * (qualities[high] - qualities[low])
        index = min(max(_nearest(qualities, guess), low + 1), high - 1)
        if met(index):
            return index, WITHIN
        if errors[index] < 0:
            low, weight_low = index, errors[index]
            weight_high = weight_high / 2 if kept == -1 else weight_high
            kept = -1
        else:
            high, weight_high = index, errors[index]
            weight_low = weight_low / 2 if kept == 1 else weight_low
            kept = 1
    return _around_crossing(met, errors, len(qualities), low, high)


def _around_crossing(met: Callable[[int], bool], errors: dict[int, float], count: int, low: int, high: int) -> tuple[int, str]:
    """After a bracket closed on the neighbours ``low``, ``high`` without meeting the target: the
    unprobed grid indices nearest the crossing, alternately below and above it, up to
    NEIGHBOUR_PROBES of them, until one is within tolerance; else the closest of all probes."""
    unprobed = (i for d in range(1, count) for i in (low - d, high + d) if 0 <= i < count and i not in errors)
    for index in itertools.islice(unprobed, NEIGHBOUR_PROBES):
        if met(index):
            return index, WITHIN
    # Of equally close probes the higher quality (files of one size at neighbouring qualities: the better picture).
    return min(errors, key=lambda i: (abs(errors[i]), -i)), CLOSEST


def _slope(qualities: Sequence[float], errors: dict[int, float], a: int, b: int) -> float:
    """Secant slope of the errors between grid indices ``a`` and ``b`` (0 when not usable)."""
    slope = (errors[b] - errors[a]) / (qualities[b] - qualities[a])
    return slope if math.isfinite(slope) else 0.0


def _step_towards(qualities: Sequence[float], guess: float, current: int, edge: int) -> int:
    """The grid index nearest ``guess``, at least one step from ``current`` towards ``edge``, not past it."""
    index = _nearest(qualities, guess) if math.isfinite(guess) else edge
    if edge > current:
        return min(max(index, current + 1), edge)
    return max(min(index, current - 1), edge)


def _nearest(qualities: Sequence[float], quality: float) -> int:
    """Index of the grid quality nearest ``quality`` (the lower one on a tie)."""
    right = bisect.bisect_left(qualities, quality)
    if right == 0:
        return 0
    if right == len(qualities):
        return len(qualities) - 1
    return right if qualities[right] - quality < quality - qualities[right - 1] else right - 1


def _decoded_psnr(image: SourceImage, data: bytes, model: LoadedModel, device: str, precision: str) -> float:
    """PSNR in dB of ``data`` decoded against ``image``, over the channels the decoder delivers
    (one for a grayscale image)."""
    decoded = decode_image(data, model, device=device, precision=precision)
    channels = 1 if image.color_mode == "gray" else 3
    return psnr(image.rgb[..., :channels], decoded.rgb[..., :channels])
