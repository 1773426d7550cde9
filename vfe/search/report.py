"""`vfe search --report PAGE.html`: one self-contained page (no external files or scripts) to
send to a colleague.

A header says what was searched (query, folder, model, weights, date, counts). Hits are grouped
by video, best video first: the video's short path (the full one on hover), its similarity to
the query over time with the hits shaded and numbered, and each hit's frame at its clip's middle
(decoded from the source video) as a link that opens the video at the hit (`file://...#t=S,E`);
a sample of a shard has its frame, read from the member of its input shard, and no link.
The layout fills a wide screen and stacks on a phone.
"""

import base64
import html
import io
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from vfe.decoding.source import InMemoryFile
from vfe.decoding.video import file_errors, open_video
from vfe.sources.shards import shard_member

THUMBNAIL_HEIGHT = 144
# The chart's drawing units (it scales to the width it is given, keeping its shape).
CHART_WIDTH, CHART_HEIGHT = 520, 230
PLOT_LEFT, PLOT_RIGHT, PLOT_TOP, PLOT_BOTTOM = 70, 12, 26, 50
LINE_COLOUR, HIT_COLOUR = "#1f6feb", "#d29922"


@dataclass
class Hit:
    source: str | None  # the video file, where known
    features_file: str  # relative to the features folder
    start_seconds: float
    end_seconds: float
    score: float


@dataclass
class Searched:
    """What the header says: what was searched, with what, when."""

    features_dir: str
    model: str  # e.g. "CLIP ViT-B/32"
    weights: str  # a file name, "official", ...
    weights_sha256: str
    when: str  # local date and time
    num_videos: int  # in the folder
    num_clips: int


def frame_at(video_path: "Path | InMemoryFile", time_seconds: Fraction) -> np.ndarray:
    """`(H, W, 3) uint8`: the frame on screen at `time_seconds` (the last one starting at or
    before it), decoded by vfe's default decoder from a seek."""
    video = open_video(video_path, "pyav")
    on_screen = None
    start = max(Fraction(0), time_seconds - 1)
    frames = video.frames(start)
    for frame in frames:
        if frame.time_seconds > time_seconds:
            break
        on_screen = frame
    frames.close()
    if on_screen is None:
        raise ValueError(f"no frame at {float(time_seconds)} s")
    return on_screen.rgb().numpy()


def thumbnail_data_uri(image: np.ndarray) -> str:
    picture = Image.fromarray(image)
    width = max(1, round(picture.width * THUMBNAIL_HEIGHT / picture.height))
    buffer = io.BytesIO()
    picture.resize((width, THUMBNAIL_HEIGHT), Image.BICUBIC).save(buffer, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def nice_step(span: float, ticks: int = 6) -> float:
    """A round tick step (1, 2 or 5 times a power of ten) giving about `ticks` ticks."""
    raw = max(span, 1e-9) / ticks
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def timeline_svg(
    windows: np.ndarray, scores: np.ndarray, hits: list[tuple[int, float, float]]
) -> str:
    """One video's cosine to the query at each clip's middle, on labelled axes; `hits`:
    `(rank, start_seconds, end_seconds)`, shaded and numbered."""
    if not len(scores):
        return ""
    end = float(windows["end_seconds"].max()) or 1.0
    low, high = float(scores.min()), float(scores.max())
    pad = (high - low) * 0.08 or 0.01
    low, high = low - pad, high + pad
    middles = (windows["start_seconds"] + windows["end_seconds"]) / 2
    width = CHART_WIDTH - PLOT_LEFT - PLOT_RIGHT
    height = CHART_HEIGHT - PLOT_TOP - PLOT_BOTTOM

    def x(t: float) -> float:
        return PLOT_LEFT + width * t / end

    def y(score: float) -> float:
        return PLOT_TOP + height * (high - score) / (high - low)

    parts = []
    for rank, start, stop in hits:  # the hits first, under the line
        left, right = x(start), max(x(stop), x(start) + 2)
        parts.append(
            f'<rect class="hitband" x="{left + 0.5:.1f}" y="{PLOT_TOP}" '
            f'width="{right - left - 1:.1f}" height="{height}">'
            f"<title>hit #{rank}: {start:.2f}-{stop:.2f} s</title></rect>"
            f'<text class="hitlabel" x="{(left + right) / 2:.1f}" y="{PLOT_TOP - 6}" '
            f'text-anchor="middle">#{rank}</text>'
        )
    step = nice_step(end)
    for tick in np.arange(0, end + 1e-9, step):
        parts.append(
            f'<line class="grid" x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="{PLOT_TOP}" '
            f'y2="{PLOT_TOP + height}"/><text x="{x(tick):.1f}" y="{PLOT_TOP + height + 18}" '
            f'text-anchor="middle">{tick:g}</text>'
        )
    score_step = nice_step(high - low, 4)
    for tick in np.arange(math.ceil(low / score_step) * score_step, high, score_step):
        parts.append(
            f'<line class="grid" x1="{PLOT_LEFT}" x2="{PLOT_LEFT + width}" y1="{y(tick):.1f}" '
            f'y2="{y(tick):.1f}"/><text x="{PLOT_LEFT - 6}" y="{y(tick) + 4:.1f}" '
            f'text-anchor="end">{tick:.3g}</text>'
        )
    points = " ".join(f"{x(t):.1f},{y(s):.1f}" for t, s in zip(middles, scores, strict=True))
    parts.append(f'<polyline class="scores" points="{points}"/>')
    parts.append(
        f'<text class="axis" x="{PLOT_LEFT + width / 2:.1f}" y="{CHART_HEIGHT - 6}" '
        f'text-anchor="middle">time in the video (s)</text>'
        f'<text class="axis" transform="translate(18 {PLOT_TOP + height / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle">cosine to the query</text>'
    )
    return (
        f'<svg class="timeline" viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" role="img">'
        f"<title>cosine to the query over {end:.1f} s; hits shaded</title>{''.join(parts)}</svg>"
    )


def _short_names(paths: list[str]) -> dict[str, str]:
    """Each path relative to the folder all of them share (their file names for one)."""
    if len(set(paths)) <= 1:
        return {path: Path(path).name for path in paths}
    root = os.path.commonpath([os.path.abspath(path) for path in paths])
    return {path: os.path.relpath(os.path.abspath(path), root) for path in paths}


def _hit_figure(rank: int, hit: Hit, missing: list[str]) -> str:
    middle = (Fraction(str(hit.start_seconds)) + Fraction(str(hit.end_seconds))) / 2
    image = '<div class="nothumb">video not found</div>'
    link = None
    video: Path | InMemoryFile | None = None
    if hit.source is not None and Path(hit.source).exists():
        video = Path(hit.source)
        link = f"{video.resolve().as_uri()}#t={hit.start_seconds:g},{hit.end_seconds:g}"
    elif hit.source is not None:  # a sample of a shard: its member, read from the shard
        video = shard_member(hit.source)
    if video is not None:
        try:
            uri = thumbnail_data_uri(frame_at(video, middle))
            image = f'<img src="{uri}" alt="frame at {float(middle):.2f} s">'
        except (*file_errors("pyav"), ValueError) as error:
            missing.append(f"{hit.source}: {error}")
    else:
        missing.append(f"{hit.features_file}: source video {hit.source!r} not found")
    if link is not None:
        image = f'<a href="{html.escape(link)}" title="open the video at this clip">{image}</a>'
    return (
        f'<figure class="hit" data-rank="{rank}" data-time="{float(middle)}" '
        f'data-start="{hit.start_seconds}" data-end="{hit.end_seconds}" '
        f'data-source="{html.escape(hit.source or hit.features_file)}">{image}'
        f"<figcaption><b>#{rank}</b> {hit.start_seconds:.2f}&ndash;{hit.end_seconds:.2f} s "
        f"<span class='score'>{hit.score:.4f}</span></figcaption></figure>"
    )


STYLE = f"""
*{{box-sizing:border-box}}
body{{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1f2328;background:#f6f8fa}}
header{{background:#fff;border-bottom:1px solid #d0d7de;padding:1.2em 2em}}
h1{{margin:0 0 .4em;font-size:1.6em;word-break:break-word}}
h1 .label{{color:#59636e;font-weight:normal;font-size:.6em;display:block}}
dl{{display:grid;grid-template-columns:max-content 1fr;gap:.15em 1em;margin:0;font-size:.92em}}
dt{{color:#59636e}}dd{{margin:0;overflow-wrap:anywhere}}
main{{padding:1em 2em;max-width:1600px}}
.legend{{color:#59636e;font-size:.9em;margin:.3em 0 1em}}
.legend i{{display:inline-block;width:1.6em;height:.7em;vertical-align:middle;margin-right:.3em}}
section.video{{background:#fff;border:1px solid #d0d7de;border-radius:8px;margin:0 0 1.2em;
padding:1em 1.2em;display:grid;grid-template-columns:minmax(0,1.1fr) minmax(0,1fr);gap:1.2em}}
section.video h2{{grid-column:1/-1;margin:0;font-size:1.05em;overflow-wrap:anywhere}}
section.video h2 small{{color:#59636e;font-weight:normal}}
.hits{{display:flex;flex-wrap:wrap;gap:.6em;align-content:flex-start}}
figure.hit{{margin:0;width:min-content}}
figure.hit img,.nothumb{{display:block;height:{THUMBNAIL_HEIGHT}px;border-radius:4px}}
.nothumb{{width:{THUMBNAIL_HEIGHT * 16 // 9}px;background:#eaeef2;color:#59636e;
display:flex;align-items:center;justify-content:center}}
figcaption{{font-size:.85em;white-space:nowrap}}.score{{color:#59636e}}
svg.timeline{{width:100%;height:auto;font-size:15px;fill:#59636e}}
svg .scores{{fill:none;stroke:{LINE_COLOUR};stroke-width:2}}
svg .hitband{{fill:{HIT_COLOUR};fill-opacity:.28}}svg .hitlabel{{fill:#9a6700;font-weight:bold}}
svg .grid{{stroke:#d0d7de;stroke-width:1}}svg .axis{{fill:#1f2328}}
@media (max-width:800px){{header,main{{padding:1em}}section.video{{grid-template-columns:1fr}}
figure.hit img,.nothumb{{height:{THUMBNAIL_HEIGHT * 3 // 4}px}}}}
"""


def write_report(
    page: Path,
    query: str,
    hits: list[Hit],
    timelines: dict[str, str],
    searched: Searched,
) -> list[str]:
    """Write the page (`timelines`: per video, by `hit.source or hit.features_file`, its
    chart); the thumbnails that could not be made (video missing or unreadable)."""
    missing: list[str] = []
    groups: dict[str, list[tuple[int, Hit]]] = {}
    for rank, hit in enumerate(hits, start=1):
        groups.setdefault(hit.source or hit.features_file, []).append((rank, hit))
    short = _short_names(list(groups))
    sections = []
    for name, ranked in groups.items():
        figures = "".join(_hit_figure(rank, hit, missing) for rank, hit in ranked)
        count = f"{len(ranked)} hit{'s' if len(ranked) > 1 else ''}, best #{ranked[0][0]}"
        sections.append(
            f'<section class="video"><h2 title="{html.escape(name)}">'
            f"{html.escape(short[name])} <small>{count}</small></h2>"
            f'<div class="chart">{timelines.get(name, "")}</div>'
            f'<div class="hits">{figures}</div></section>'
        )
    facts = {
        "folder": searched.features_dir,
        "model": searched.model,
        "weights": f"{searched.weights} (sha256 {searched.weights_sha256[:12]}...)",
        "searched": searched.when,
        "results": (
            f"{len(hits)} best clips, in {len(groups)} of {searched.num_videos} videos "
            f"({searched.num_clips} clips searched)"
        ),
    }
    header = "".join(f"<dt>{k}</dt><dd>{html.escape(v)}</dd>" for k, v in facts.items())
    legend = (
        f'<p class="legend"><i style="background:{LINE_COLOUR};height:3px"></i>cosine of each '
        "clip to the query, at the clip's middle &nbsp; "
        f'<i style="background:{HIT_COLOUR};opacity:.5"></i>a hit below, numbered by rank. '
        "A thumbnail is the frame at its clip's middle; click it to open the video there.</p>"
    )
    page.write_text(
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>vfe search: {html.escape(query)}</title><style>{STYLE}</style></head><body>"
        f"<header><h1><span class='label'>vfe search</span>{html.escape(query)}</h1>"
        f"<dl>{header}</dl></header><main>{legend}{''.join(sections)}</main></body></html>",
        encoding="utf-8",
    )
    return missing
