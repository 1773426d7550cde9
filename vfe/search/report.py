"""`vfe search --report PAGE.html`: one self-contained page (no external files or scripts):
for each hit the frame on screen at its clip's middle, decoded from the source video, and for
each video with a hit its query-similarity timeline as an inline SVG plot."""

import base64
import html
import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from vfe.decoding.video import file_errors, open_video

THUMBNAIL_HEIGHT = 144
TIMELINE_WIDTH, TIMELINE_HEIGHT = 640, 90


@dataclass
class Hit:
    source: str | None  # the video file, where known
    features_file: str  # relative to the features folder
    start_seconds: float
    end_seconds: float
    score: float


def frame_at(video_path: Path, time_seconds: Fraction) -> np.ndarray:
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


def timeline_svg(windows: np.ndarray, scores: np.ndarray, marked: list[float]) -> str:
    """Scores over time (clip middles) as a polyline; `marked`: the hits' middles."""
    if not len(scores):
        return ""
    end = float(windows["end_seconds"].max()) or 1.0
    low, high = float(scores.min()), float(scores.max())
    span = (high - low) or 1.0
    middles = (windows["start_seconds"] + windows["end_seconds"]) / 2

    def x(t: float) -> float:
        return 4 + (TIMELINE_WIDTH - 8) * t / end

    def y(score: float) -> float:
        return TIMELINE_HEIGHT - 4 - (TIMELINE_HEIGHT - 8) * (score - low) / span

    points = " ".join(f"{x(t):.1f},{y(s):.1f}" for t, s in zip(middles, scores, strict=True))
    marks = "".join(
        f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="0" y2="{TIMELINE_HEIGHT}" class="mark"/>'
        for t in marked
    )
    return (
        f'<svg class="timeline" width="{TIMELINE_WIDTH}" height="{TIMELINE_HEIGHT}" '
        f'viewBox="0 0 {TIMELINE_WIDTH} {TIMELINE_HEIGHT}" role="img">{marks}'
        f'<polyline points="{points}" fill="none" stroke="#1f6feb" stroke-width="1.5"/>'
        f'<text x="4" y="12" font-size="10">{high:.3f}</text>'
        f'<text x="4" y="{TIMELINE_HEIGHT - 6}" font-size="10">{low:.3f}</text>'
        f'<text x="{TIMELINE_WIDTH - 4}" y="{TIMELINE_HEIGHT - 6}" font-size="10" '
        f'text-anchor="end">{end:.1f} s</text>'
        f"<title>cosine {low:.3f} to {high:.3f} over {end:.1f} s</title></svg>"
    )


def write_report(page: Path, query: str, hits: list[Hit], timelines: dict[str, str]) -> list[str]:
    """Write the page; the thumbnails that could not be made (video missing or unreadable)."""
    missing = []
    figures = []
    for rank, hit in enumerate(hits, start=1):
        middle = (Fraction(str(hit.start_seconds)) + Fraction(str(hit.end_seconds))) / 2
        image_html = '<div class="nothumb">video not found</div>'
        if hit.source is not None and Path(hit.source).exists():
            try:
                uri = thumbnail_data_uri(frame_at(Path(hit.source), middle))
                image_html = f'<img src="{uri}" alt="frame at {float(middle):.2f} s">'
            except (*file_errors("pyav"), ValueError) as error:
                missing.append(f"{hit.source}: {error}")
        else:
            missing.append(f"{hit.features_file}: source video {hit.source!r} not found")
        label = html.escape(hit.source or hit.features_file)
        figures.append(
            f'<figure class="hit" data-rank="{rank}" data-time="{float(middle)}" '
            f'data-start="{hit.start_seconds}" data-end="{hit.end_seconds}">{image_html}'
            f"<figcaption>#{rank} {label}<br>{hit.start_seconds:.2f}-{hit.end_seconds:.2f} s, "
            f"score {hit.score:.4f}</figcaption></figure>"
        )
    sections = "".join(
        f'<section class="video"><h3>{html.escape(name)}</h3>{svg}</section>'
        for name, svg in timelines.items()
    )
    page.write_text(
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>vfe search: {html.escape(query)}</title><style>"
        "body{font-family:sans-serif;margin:1.5em}figure.hit{display:inline-block;margin:.5em;"
        "vertical-align:top;width:min-content}figure img{display:block}figcaption{font-size:"
        ".8em;min-width:12em}.mark{stroke:#d29922;stroke-width:1}.nothumb{width:12em;height:"
        f"{THUMBNAIL_HEIGHT}px;background:#eee}}</style></head><body>"
        f"<h1>{html.escape(query)}</h1><div class='hits'>{''.join(figures)}</div>"
        f"<h2>Similarity over time</h2>{sections}</body></html>",
        encoding="utf-8",
    )
    return missing
