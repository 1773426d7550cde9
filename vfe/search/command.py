"""`vfe search "QUERY" FEATURES_DIR [--top_k K] [--json] [--report PAGE.html]`: every clip of a
features folder ranked by cosine with the query's text embedding, made by the text encoder of
the model and weights the folder records (as `vfe text` does)."""

import argparse
import glob
import json
import sys
from datetime import datetime
from pathlib import Path

import numpy as np

from vfe.data.paths import VIDEO_EXTENSIONS
from vfe.destinations import is_url
from vfe.errors import ExitCode, VfeError
from vfe.search.index import ClipIndex, load_index, top_clips, video_scores
from vfe.search.report import Hit, Searched, timeline_svg, write_report
from vfe.text.command import build_text_tower


def source_of(video: dict, input_dir: Path | None) -> str | None:
    """The video a features file was made from: as recorded, or, where that file is gone (a
    moved or copied dataset) or not recorded (older files), found under `input_dir` by its
    relative path: a video file (by suffix) of the same name; where several match, the first,
    and a warning names them."""
    recorded = video.get("source")
    if input_dir is None or (recorded and Path(recorded).exists()):
        return recorded
    stem = Path(video["features_file"]).with_suffix("")
    found = sorted(
        path
        for path in (input_dir / stem.parent).glob(f"{glob.escape(stem.name)}.*")
        if path.stem == stem.name and path.suffix.lower() in VIDEO_EXTENSIONS
    )
    if len(found) > 1:
        names = ", ".join(path.name for path in found)
        print(
            f"vfe search: warning: {len(found)} videos match {video['features_file']} under "
            f"--input_dir ({names}); showing {found[0].name}",
            file=sys.stderr,
        )
    return str(found[0]) if found else None


def search(
    query: str, features_dir: Path, top_k: int, input_dir: Path | None = None
) -> tuple[list[Hit], ClipIndex, np.ndarray]:
    """The `top_k` hits, best first, with the index and the query embedding."""
    index = load_index(features_dir)
    tower = build_text_tower(index.model, f"features folder {str(features_dir)!r}")
    _, pooled = tower.encode([query])
    embedding = pooled[0].float().numpy()
    rows, scores = top_clips(index, embedding, top_k)
    hits = []
    for row, score in zip(rows, scores, strict=True):
        clip = index.clips[row]
        video = index.videos[int(clip["video"])]
        hits.append(
            Hit(
                source=source_of(video, input_dir),
                features_file=video["features_file"],
                start_seconds=float(clip["start_seconds"]),
                end_seconds=float(clip["end_seconds"]),
                score=float(score),
            )
        )
    return hits, index, embedding


def what_was_searched(features_dir: Path, index: ClipIndex) -> Searched:
    """The report's header: the folder, the model and weights its files record, now."""
    model = index.model
    name = str(model.get("model", "")).rsplit(".", 1)[-1].removesuffix("Backbone")
    weights = (model.get("options") or {}).get("weights") or "official"
    return Searched(
        features_dir=str(features_dir.resolve()),
        model=f"{name} {model.get('arch', '')}".strip(),
        weights=Path(weights).name if weights not in ("official", "random") else weights,
        weights_sha256=str(model.get("weights_sha256", "")),
        when=datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        num_videos=len(index.videos),
        num_clips=len(index.clips),
    )


# The docstring's first paragraph, whole (its first line stops mid-sentence).
DESCRIPTION = " ".join(__doc__.split("\n\n")[0].split())


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="vfe search", description=DESCRIPTION)
    parser.add_argument("query", help='what to look for, in words ("a dog catches a frisbee")')
    parser.add_argument("features_dir", help="one backbone's folder from vfe predict")
    parser.add_argument("--top_k", type=int, default=10, help="how many clips (default 10)")
    parser.add_argument("--json", action="store_true", help="print the hits as a JSON list")
    parser.add_argument("--report", type=Path, help="write an HTML page with thumbnails")
    parser.add_argument(
        "--input_dir", type=Path, help="where the videos are, if moved since extraction"
    )
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error(f"--top_k must be a positive integer, got {args.top_k}")
    if is_url(args.features_dir):
        parser.error(
            f"{args.features_dir} is a URL: search keeps an index beside the features, so it "
            "reads a local folder; copy the folder of output shards here and search that"
        )
    args.features_dir = Path(args.features_dir)
    try:
        hits, index, embedding = search(args.query, args.features_dir, args.top_k, args.input_dir)
        if args.report is not None:
            timelines: dict[str, str] = {}
            by_file = {video["features_file"]: n for n, video in enumerate(index.videos)}
            for hit in hits:
                if (hit.source or hit.features_file) in timelines:
                    continue
                number = by_file[hit.features_file]
                windows, scores = video_scores(index, number, embedding)
                marked = [
                    (rank, h.start_seconds, h.end_seconds)
                    for rank, h in enumerate(hits, start=1)
                    if h.features_file == hit.features_file
                ]
                label = hit.source or hit.features_file
                timelines[label] = timeline_svg(windows, scores, marked)
            searched = what_was_searched(args.features_dir, index)
            missing = write_report(args.report, args.query, hits, timelines, searched)
            for line in missing:
                print(f"vfe search: warning: no thumbnail: {line}", file=sys.stderr)
            print(f"vfe search: report written to {args.report}", file=sys.stderr)
    except VfeError as error:
        print(f"vfe search: error: {error}", file=sys.stderr)
        sys.exit(ExitCode.USAGE)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "path": hit.source or hit.features_file,
                        "start_seconds": hit.start_seconds,
                        "end_seconds": hit.end_seconds,
                        "score": hit.score,
                    }
                    for hit in hits
                ]
            )
        )
    else:
        for hit in hits:
            where = hit.source or hit.features_file
            print(f"{hit.score:.4f}  {hit.start_seconds:8.2f}-{hit.end_seconds:8.2f} s  {where}")
