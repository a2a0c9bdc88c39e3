"""HTML pages for people: the ``compare`` report and the ``eval --html`` dataset report.

Both pages work offline in any browser: no scripts, fonts or styles from the network. The compare
page (``index.html`` in the report folder) refers to the images beside it by relative paths; the eval
page is one file, its plot inline SVG and its images ``data:`` URIs.

The compare page shows, per image, a viewer with two pictures under a slider (any two of the original
and the decodings, chosen in two menus; the slider moves the split), the table of measures, and the
crops of the regions where the codecs differ most at 1:1 and at ``ZOOM``x with square pixels. Its
records (:class:`ImageReport`, with a :class:`Version` per codec and the :class:`Region` crops) are
defined here and filled by :mod:`cca_codec.measure.compare`.
"""
from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cca_codec import __version__
from cca_codec.base.fileio import atomic_write

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1280px; padding: 0 1em; color: #1b1b1b; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.55em; text-align: right; }
th:first-child, td:first-child, td.text { text-align: left; }
td.best { font-weight: bold; background: #e8f4e8; }
tr.ours td:first-child { font-weight: bold; }
.viewer { margin: 0.8em 0; display: table; max-width: 100%; }
.controls { margin-bottom: 0.4em; }
.stage { position: relative; display: inline-block; max-width: 100%; line-height: 0; }
.stage img { display: block; max-width: 100%; height: auto; }
.stage img.over { position: absolute; left: 0; top: 0; }
.divider { position: absolute; top: 0; bottom: 0; width: 2px; background: #ff3b30; pointer-events: none; }
input.split { display: block; width: 100%; max-width: 100%; }
.label-left, .label-right { font-size: 0.85em; color: #555; }
.crops { display: flex; flex-wrap: wrap; gap: 0.8em; }
figure { margin: 0; font-size: 0.8em; text-align: center; }
figure img { display: block; margin: 0 auto 0.2em; }
img.zoom { image-rendering: pixelated; image-rendering: crisp-edges; }
.note { color: #8a5a00; } .failure { color: #b00020; }
table.measures td:nth-child(2) { white-space: nowrap; }
svg { max-width: 100%; height: auto; }
"""

SCRIPT = """
for (const viewer of document.querySelectorAll('[data-viewer]')) {
  const under = viewer.querySelector('img.under'), over = viewer.querySelector('img.over');
  const divider = viewer.querySelector('.divider'), split = viewer.querySelector('input.split');
  const left = viewer.querySelector('select.pick-left'), right = viewer.querySelector('select.pick-right');
  const show = () => {
    over.style.clipPath = 'inset(0 0 0 ' + split.value + '%)';
    divider.style.left = split.value + '%';
  };
  split.addEventListener('input', show);
  left.addEventListener('change', () => { under.src = left.value; });
  right.addEventListener('change', () => { over.src = right.value; });
  viewer.querySelector('button.swap').addEventListener('click', () => {
    [left.value, right.value] = [right.value, left.value];
    under.src = left.value; over.src = right.value;
  });
  show();
}
"""


def _page(title: str, body: str, script: str = "") -> str:
    """A complete HTML document."""
    tail = f"<script>{script}</script>\n" if script else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n{tail}</body>\n</html>\n"
    )


def _number(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


# ------------------------------------------------------------------------------ compare

ZOOM = 4
"""The zoomed crop shows the central 1/ZOOM of the 1:1 crop, each pixel ZOOM times."""


@dataclass
class Version:
    """One codec's file of one image, decoded and measured.

    Attributes:
        name: ``ccacodec`` or the classical codec's key (``jpeg``, ``webp`` ...).
        label: what the codec is, for people (``ccacodec cca-compact``, ``webp-pillow``).
        setting: the setting used, in the codec's own terms (``quality 4.25``, ``distance 1.3``).
        bytes: file size on disk; bpp = 8 * bytes / (W * H).
        psnr: PSNR-RGB in dB on 8-bit RGB; ms_ssim: on RGB, None under 161 px a side;
        ssimulacra2: SSIMULACRA2 score (100 = identical), None where the image is too small.
        encode_s, decode_s: wall seconds of one encode and one decode at ``setting``.
        file: the coded file; decoded: its decoding as PNG (both relative to the report folder).
        size_error: bytes / ccacodec's bytes - 1 (0 for ccacodec itself).
        note: why the size match is not within ``compare.SIZE_TOLERANCE`` (or how ccacodec's rate was chosen).
    """

    name: str
    label: str
    setting: str
    bytes: int
    bpp: float
    psnr: float
    ms_ssim: float | None
    ssimulacra2: float | None
    encode_s: float
    decode_s: float
    file: str
    decoded: str
    size_error: float = 0.0
    note: str | None = None


@dataclass
class Region:
    """A place where the codecs differ: the 1:1 crop's box (pixels) and each version's crops.

    Attributes:
        box: (left, top, side) of the 1:1 crop; the zoomed crop is its central side/zoom square.
        spread: how much the codecs differ there: max minus min over the codecs of the block's MSE.
        zoom: the zoomed crop's magnification.
        crops: {version name (``original`` too): (1:1 crop PNG, zoomed crop PNG)}, relative paths.
    """

    box: tuple[int, int, int]
    spread: float
    zoom: int = ZOOM
    crops: dict[str, tuple[str, str]] = field(default_factory=dict)


@dataclass
class ImageReport:
    """Everything the report shows of one image.

    Attributes:
        image: the input path as given; width, height: pixels.
        folder: the image's folder in the report; original: its 8-bit RGB PNG (relative paths).
        codecs: ccacodec first, then each compared codec that ran, in the order asked.
        failures: one line per compared codec that failed on this image.
        regions: the crops, most differing first.
    """

    image: str
    width: int
    height: int
    folder: str
    original: str
    codecs: list[Version]
    failures: list[str]
    regions: list[Region]

    def to_dict(self) -> dict:
        """The record as ``--json`` prints it (paths relative to the report folder)."""
        return asdict(self)


def write_compare_page(reports: Sequence[ImageReport], folder: Path) -> Path:
    """Write ``folder/index.html`` for the :class:`ImageReport` records; returns its path."""
    sections = [_image_section(report, index) for index, report in enumerate(reports)]
    names = ", ".join(_e(Path(r.image).name) for r in reports)
    intro = (
        f"<h1>ccacodec compare: {names}</h1>\n"
        "<p>Each codec's file comes as close as its settings allow to the size of ccacodec's file; every file is "
        "decoded by its own decoder. PSNR-RGB and MS-SSIM are on 8-bit RGB, SSIMULACRA2 on the "
        "decoded sRGB (100 = identical, about 90 = visually lossless, 70 high, 50 medium quality). "
        "The best value of each measure is marked. Drag the slider to move the split between the two "
        f"pictures chosen above it. Made by ccacodec {_e(__version__)}.</p>"
    )
    page = folder / "index.html"
    page.write_text(_page("ccacodec compare", intro + "\n" + "\n".join(sections), SCRIPT), encoding="utf-8")
    return page


def _image_section(report: ImageReport, index: int) -> str:
    """One image: the viewer, the table, the failures and the crops."""
    versions = report.codecs
    choices = [("original", report.original)] + [(v.label, v.decoded) for v in versions]
    ours = versions[0]
    parts = [
        f"<section class=\"image\" id=\"image-{index + 1}\">",
        f"<h2>{_e(Path(report.image).name)}: {report.width}&times;{report.height} px, "
        f"{ours.bytes} bytes ({ours.bpp:.3f} bpp) each</h2>",
        _viewer(choices, left=report.original, right=ours.decoded),
        _measure_table(versions),
    ]
    parts += [f"<p class=\"failure\">{_e(line)}</p>" for line in report.failures]
    for number, region in enumerate(report.regions, 1):
        left, top, side = region.box
        parts.append(
            f"<h3>Region {number}: {side}&times;{side} px at ({left}, {top}), where the codecs differ most "
            f"(MSE spread {region.spread:.1f}); 1:1, then the centre at {region.zoom}x</h3>"
        )
        parts.append(_crop_strip(region, versions))
    parts.append("</section>")
    return "\n".join(parts)


def _viewer(choices: list[tuple[str, str]], left: str, right: str) -> str:
    """Two pictures under a slider, each chosen from ``choices`` ((label, src) pairs)."""

    def menu(css: str, selected: str) -> str:
        options = "".join(
            f"<option value=\"{_e(src)}\"{' selected' if src == selected else ''}>{_e(label)}</option>" for label, src in choices
        )
        return f"<select class=\"{css}\">{options}</select>"

    return (
        "<div class=\"viewer\" data-viewer>\n"
        f"<div class=\"controls\"><span class=\"label-left\">left</span> {menu('pick-left', left)} "
        f"<button class=\"swap\" type=\"button\">swap</button> "
        f"{menu('pick-right', right)} <span class=\"label-right\">right</span></div>\n"
        f"<div class=\"stage\"><img class=\"under\" src=\"{_e(left)}\" alt=\"left picture\">"
        f"<img class=\"over\" src=\"{_e(right)}\" alt=\"right picture\"><div class=\"divider\"></div></div>\n"
        "<input class=\"split\" type=\"range\" min=\"0\" max=\"100\" value=\"50\" aria-label=\"split position\">\n"
        "</div>"
    )


def _measure_table(versions: Sequence[Version]) -> str:
    """The measures of every version; the best of each quality measure (and of the sizes) marked."""
    best = {
        "psnr": max(v.psnr for v in versions),
        "ms_ssim": max((v.ms_ssim for v in versions if v.ms_ssim is not None), default=None),
        "ssimulacra2": max((v.ssimulacra2 for v in versions if v.ssimulacra2 is not None), default=None),
    }

    def cell(version: Version, key: str, digits: int) -> str:
        value = getattr(version, key)
        mark = " class=\"best\"" if value is not None and value == best[key] and len(versions) > 1 else ""
        return f"<td{mark}>{_number(value, digits)}</td>"

    rows = []
    for i, v in enumerate(versions):
        size = "&mdash;" if i == 0 else f"{100 * v.size_error:+.1f} %"
        row_class = " class=\"ours\"" if i == 0 else ""
        rows.append(
            f"<tr{row_class}><td>{_e(v.label)}</td><td class=\"text\">{_e(v.setting)}</td>"
            f"<td>{v.bytes}</td><td>{v.bpp:.3f}</td><td>{size}</td>{cell(v, 'psnr', 2)}{cell(v, 'ms_ssim', 4)}"
            f"{cell(v, 'ssimulacra2', 2)}<td>{v.encode_s:.3f}</td><td>{v.decode_s:.3f}</td>"
            f"<td class=\"text\"><a href=\"{_e(v.file)}\">{_e(Path(v.file).name)}</a> "
            f"<a href=\"{_e(v.decoded)}\">png</a></td><td class=\"text note\">{_e(v.note or '')}</td></tr>"
        )
    head = (
        "<tr><th>codec</th><th>setting</th><th>bytes</th><th>bpp</th><th>size vs ccacodec</th><th>PSNR-RGB (dB)</th>"
        "<th>MS-SSIM</th><th>SSIMULACRA2</th><th>encode (s)</th><th>decode (s)</th><th>files</th><th>note</th></tr>"
    )
    return f"<table class=\"measures\">\n{head}\n" + "\n".join(rows) + "\n</table>"


def _crop_strip(region: Region, versions: Sequence[Version]) -> str:
    """The crops of one region: the original, then every version with its bpp and PSNR."""
    by_name = {v.name: v for v in versions}
    figures = []
    for name, (full, zoomed) in region.crops.items():
        side = region.box[2]
        zoom = region.zoom
        inner = max(1, side // zoom)
        version = by_name.get(name)
        caption = "original" if version is None else f"{_e(version.label)}<br>{version.bpp:.3f} bpp, {version.psnr:.2f} dB"
        figures.append(
            f"<figure><img src=\"{_e(full)}\" width=\"{side}\" height=\"{side}\" alt=\"{_e(name)} 1:1\">"
            f"<img class=\"zoom\" src=\"{_e(zoomed)}\" width=\"{inner * zoom}\" height=\"{inner * zoom}\" "
            f"alt=\"{_e(name)} {zoom}x\"><figcaption>{caption}</figcaption></figure>"
        )
    return "<div class=\"crops\">" + "".join(figures) + "</div>"


# ------------------------------------------------------------------------------ eval


@dataclass(frozen=True)
class StripPicture:
    """One picture of the eval page's strip: a crop of one image as one curve decoded it.

    Attributes:
        label: the curve (``ccacodec-cca-compact-checkerboard``, ``webp-pillow``, ``original``).
        setting: the quality or setting coded at ("" for the original).
        bpp, psnr: of the whole image at that setting (None for the original).
        png: the crop as PNG bytes.
    """

    label: str
    setting: str
    bpp: float | None
    psnr: float | None
    png: bytes


def write_eval_page(
    path: Path, title: str, description: str, plot_svg: str, tables: Sequence[tuple[str, str]], strip_title: str,
    strip: Sequence[StripPicture],
) -> Path:
    """Write the one-file dataset report: ``plot_svg`` (an inline SVG document), ``tables`` ((heading,
    HTML table) pairs) and the ``strip`` of crops under ``strip_title``. Returns ``path``."""
    svg = plot_svg[plot_svg.find("<svg"):]  # the SVG element, without the XML prologue
    parts = [f"<h1>{_e(title)}</h1>", f"<p>{_e(description)}</p>", "<h2>Rate-distortion</h2>", f"<div class=\"plot\">{svg}</div>"]
    for heading, table in tables:
        parts += [f"<h2>{_e(heading)}</h2>", table]
    parts.append(f"<h2>{_e(strip_title)}</h2>")
    figures = []
    for picture in strip:
        data = base64.b64encode(picture.png).decode("ascii")
        caption = _e(picture.label)
        if picture.bpp is not None:
            caption += f"<br>{_e(picture.setting)}: {picture.bpp:.3f} bpp, {_number(picture.psnr, 2)} dB"
        figures.append(f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{_e(picture.label)}\"><figcaption>{caption}</figcaption></figure>")
    parts.append("<div class=\"crops\">" + "".join(figures) + "</div>")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, _page(title, "\n".join(parts)).encode("utf-8"))
    return Path(path)


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain table; cells are escaped here."""
    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>"
    body = ["<tr>" + "".join(f"<td>{_e(cell)}</td>" for cell in row) + "</tr>" for row in rows]
    return "<table>\n" + head + "\n" + "\n".join(body) + "\n</table>"
