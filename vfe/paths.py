"""Where inputs are found and where each video's output goes."""

from dataclasses import dataclass
from pathlib import Path

from vfe.errors import VfeError

VIDEO_EXTENSIONS = frozenset(
    {
        ".3gp", ".avi", ".flv", ".m2ts", ".m4v", ".mkv", ".mov", ".mp4",
        ".mpeg", ".mpg", ".mts", ".ogv", ".ts", ".webm", ".wmv",
    }
)  # fmt: skip
FAILURES_FILE_NAME = "failures.jsonl"


@dataclass(frozen=True)
class VideoEntry:
    """One input video: its absolute path, its path relative to the input folder, its size."""

    path: Path
    relative_path: str
    size_bytes: int


def default_output_dir(model_name: str) -> Path:
    return Path("features") / model_name


def resolve_output_dir(output_dir: Path | None, model_name: str) -> Path:
    return Path(output_dir) if output_dir is not None else default_output_dir(model_name)


def output_path_for(output_dir: Path, relative_path: str) -> Path:
    """`<output_dir>/<relative path with its extension replaced by .npz>`."""
    return (output_dir / relative_path).with_suffix(".npz")


def find_videos(input_dir: Path) -> list[VideoEntry]:
    """Video files under `input_dir` (recursive, by extension, case-insensitive), sorted by path.

    Two videos that would write the same .npz (`a.mp4` and `a.mkv` side by side) are an error:
    one would silently overwrite the other.
    """
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise VfeError(f"--input_dir {str(input_dir)!r} is not a folder")
    entries = []
    for path in sorted(input_dir.rglob("*")):
        if path.suffix.lower() in VIDEO_EXTENSIONS and path.is_file():
            relative = path.relative_to(input_dir).as_posix()
            entries.append(VideoEntry(path.resolve(), relative, path.stat().st_size))
    if not entries:
        raise VfeError(
            f"--input_dir {str(input_dir)!r} holds no videos (looked recursively for "
            f"{', '.join(sorted(VIDEO_EXTENSIONS))})"
        )
    by_output: dict[str, list[str]] = {}
    for entry in entries:
        by_output.setdefault(Path(entry.relative_path).with_suffix("").as_posix(), []).append(
            entry.relative_path
        )
    clashes = [names for names in by_output.values() if len(names) > 1]
    if clashes:
        listed = "; ".join(" and ".join(names) for names in clashes[:5])
        raise VfeError(
            f"{len(clashes)} group(s) of videos would write the same .npz ({listed}); "
            "rename or move them apart"
        )
    return entries
