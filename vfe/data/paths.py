"""Where inputs are found, how a video is recognised again, and where each video's output goes."""

import csv
import hashlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from vfe.decoding.source import InMemoryFile, RemoteFile, storage_errors
from vfe.destinations import RESERVED_NAMES, is_url, path_inside
from vfe.errors import VfeError

VIDEO_EXTENSIONS = frozenset(
    {
        ".3gp", ".avi", ".flv", ".m2ts", ".m4v", ".mkv", ".mov", ".mp4",
        ".mpeg", ".mpg", ".mts", ".ogv", ".ts", ".webm", ".wmv",
    }
)  # fmt: skip
# Audio files, listed where every backbone of a run is an audio backbone (`--model pann`).
AUDIO_EXTENSIONS = frozenset({".aac", ".flac", ".m4a", ".mp3", ".oga", ".ogg", ".opus", ".wav"})


def is_audio_file(path: Path) -> bool:
    """An audio file (no picture to decode): time 0 is its first sample."""
    return PurePosixPath(str(path)).suffix.lower() in AUDIO_EXTENSIONS


FINGERPRINT_BLOCKS = 16
FINGERPRINT_BLOCK_BYTES = 16 * 1024


def video_fingerprint(path: "Path | InMemoryFile | RemoteFile") -> str:
    """A cheap fingerprint of a video's bytes: sha256 of its size and of 16 blocks of 16 KiB
    spread evenly from its first to its last byte (the whole file when smaller). Tells a copied
    or touched video (same bytes) from an edited one without reading it all."""
    digest = hashlib.sha256()
    if isinstance(path, InMemoryFile):
        opened, size = io.BytesIO(path.data), path.size_bytes
    elif isinstance(path, RemoteFile):  # fetch the blocks read, not fsspec's read-ahead
        opened = path.open(block_size=FINGERPRINT_BLOCK_BYTES)
        size = opened.size
    else:
        opened = open(path, "rb")  # noqa: SIM115 (closed below)
        size = os.fstat(opened.fileno()).st_size
    with opened as file:
        digest.update(size.to_bytes(8, "little"))
        if size <= FINGERPRINT_BLOCKS * FINGERPRINT_BLOCK_BYTES:
            digest.update(file.read())
        else:
            last_start = size - FINGERPRINT_BLOCK_BYTES
            for block in range(FINGERPRINT_BLOCKS):
                file.seek(last_start * block // (FINGERPRINT_BLOCKS - 1))
                digest.update(file.read(FINGERPRINT_BLOCK_BYTES))
    return f"sha256-sampled:{digest.hexdigest()}"


@dataclass(frozen=True)
class VideoEntry:
    """One input video: its absolute path, its path relative to the input folder, its size and
    modification time (a broken symbolic link has size and time 0 and fails to open)."""

    path: "Path | RemoteFile"  # a file at an fsspec URL (`s3://...`) is read in place
    relative_path: str
    size_bytes: int
    mtime_ns: int = 0


def default_output_dir(model_name: str) -> Path:
    return Path("features") / model_name


def resolve_output_dir(output_dir: Path | None, model_name: str) -> Path:
    return Path(output_dir) if output_dir is not None else default_output_dir(model_name)


def model_output_dirs(output_dir: Path | None, model_names: list[str]) -> dict[str, Path]:
    """Each backbone's folder: `output_dir` itself for one backbone (default
    `features/<name>/`); `<output_dir>/<name>/` for several (default `features/<name>/` too)."""
    if len(model_names) == 1:
        return {model_names[0]: resolve_output_dir(output_dir, model_names[0])}
    root = Path(output_dir) if output_dir is not None else default_output_dir("")
    return {name: root / name for name in model_names}


def feature_files(folder: Path) -> list[Path]:
    """The .npz files of a features folder, sorted, leaving out vfe's own folders
    (`vfe.destinations.RESERVED_NAMES`: parts of videos being merged, claims, search indexes);
    a video's output in a hidden sub-folder of the input (`.cam/`) is one of the files."""
    folder = Path(folder)
    return sorted(
        path
        for path in folder.rglob("*.npz")
        if path.relative_to(folder).parts[0] not in RESERVED_NAMES
    )


def require_feature_files(folder: Path) -> list[Path]:
    """`feature_files(folder)`, or an error naming the folder when it has none."""
    if not Path(folder).is_dir():
        raise VfeError(f"{str(folder)!r} is not a folder")
    files = feature_files(folder)
    if not files:
        raise VfeError(f"{str(folder)!r} holds no .npz feature files")
    return files


def output_path_for(output_dir: Path, relative_path: str) -> Path:
    """`<output_dir>/<relative path with its extension replaced by .npz>`."""
    return (output_dir / relative_path).with_suffix(".npz")


def check_output_dir(output_dir: Path) -> None:
    """Fail before any work if the output folder cannot be created or written."""
    existing = Path(output_dir)
    while not existing.exists():
        if existing.is_symlink():
            raise VfeError(f"output folder {str(output_dir)!r}: {str(existing)!r} is a broken link")
        existing = existing.parent
    if not existing.is_dir():
        raise VfeError(f"output folder {str(output_dir)!r}: {str(existing)!r} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise VfeError(f"output folder {str(output_dir)!r}: {str(existing)!r} is not writable")


def _walk(input_dir: Path) -> list[Path]:
    """Every file under `input_dir`, following linked folders once each (no loops)."""
    found = []
    seen = set()
    for folder, subfolders, files in os.walk(input_dir, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree, or a second link to one folder
            subfolders.clear()
            continue
        seen.add(real)
        found += [Path(folder) / name for name in files]
    return found


def find_videos(input_dir: Path, audio_files: bool = False) -> list[VideoEntry]:
    """Video files under `input_dir` (recursive, by extension, case-insensitive), sorted by path;
    with `audio_files`, audio files too (a run of audio backbones only).

    Linked folders are searched; a video that is a broken link is listed (and fails to open,
    so it is reported). Two videos that would write the same .npz (`a.mp4` and `a.mkv` side by
    side) are an error: one would silently overwrite the other.
    """
    extensions = VIDEO_EXTENSIONS | AUDIO_EXTENSIONS if audio_files else VIDEO_EXTENSIONS
    if is_url(input_dir):
        entries = _find_remote(str(input_dir), extensions)
        check_distinct_outputs(entries)
        return entries
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise VfeError(f"--input_dir {str(input_dir)!r} is not a folder")
    entries = []
    for path in sorted(_walk(input_dir)):
        if path.suffix.lower() not in extensions:
            continue
        if not path.exists() or path.is_file():  # a broken link is listed: the run reports it
            entries.append(_entry(path, path.relative_to(input_dir).as_posix()))
    if not entries:
        raise VfeError(
            f"--input_dir {str(input_dir)!r} holds no videos (looked recursively for "
            f"{', '.join(sorted(extensions))})"
        )
    check_distinct_outputs(entries)
    return entries


def _find_remote(url: str, extensions: frozenset[str]) -> list[VideoEntry]:
    """Video files under a folder at an fsspec URL (recursive, sorted), with their sizes and
    modification times as the store gives them."""
    import fsspec

    try:
        filesystem, root = fsspec.core.url_to_fs(url)
        found = filesystem.find(root, detail=True)
    except (ImportError, ValueError, *storage_errors()) as error:
        raise VfeError(f"--input_dir {url!r} cannot be listed: {error}") from error
    protocol = url.split("://", 1)[0]
    root = root.rstrip("/")
    entries = []
    for path, info in sorted(found.items()):
        if PurePosixPath(path).suffix.lower() not in extensions or info.get("type") == "directory":
            continue
        relative = path[len(root) :].lstrip("/")
        # An object's key is data: its output must stay inside the output folder.
        path_inside(Path("."), relative, f"object key under --input_dir {url!r}")
        entries.append(
            VideoEntry(
                RemoteFile(f"{protocol}://{path}"),
                relative,
                int(info.get("size") or 0),
                remote_mtime_ns(info),
            )
        )
    if not entries:
        raise VfeError(
            f"--input_dir {url!r} holds no videos (looked recursively for "
            f"{', '.join(sorted(extensions))})"
        )
    return entries


def remote_mtime_ns(info: dict) -> int:
    """An object's modification time from fsspec's `info` (S3's LastModified, a local or GCS
    mtime), in nanoseconds; 0 where the store gives none (resume then compares fingerprints)."""
    value = info.get("LastModified", info.get("mtime", info.get("updated")))
    if value is None:
        return 0
    if hasattr(value, "timestamp"):
        value = value.timestamp()
    elif isinstance(value, str):
        from datetime import datetime

        value = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return int(float(value) * 1e9)


def check_distinct_outputs(entries: list[VideoEntry], full_paths: bool = False) -> None:
    """Two videos that would write the same .npz (`a.mp4` and `a.mkv` side by side, or one id
    given twice) are an error: one would silently overwrite the other. The message names
    them as listed, or by `full_paths`."""
    by_output: dict[str, list[str]] = {}
    for entry in entries:
        top = entry.relative_path.split("/", 1)[0]
        if top in RESERVED_NAMES:
            raise VfeError(
                f"{entry.path}: its output would go inside {top}/, a folder vfe keeps for itself "
                "in the output folder; rename that input folder or list the video with an id"
            )
        key = Path(entry.relative_path).with_suffix("").as_posix()
        listed_as = not full_paths and entry.path.as_posix().endswith("/" + entry.relative_path)
        by_output.setdefault(key, []).append(entry.relative_path if listed_as else str(entry.path))
    clashes = [names for names in by_output.values() if len(names) > 1]
    if clashes:
        listed = "; ".join(" and ".join(names) for names in clashes[:5])
        raise VfeError(
            f"{len(clashes)} group(s) of videos would write the same .npz ({listed}); "
            "rename or move them apart, or give each an id (--input_list)"
        )


def _entry(path: Path, name: str) -> VideoEntry:
    """`name`: where the video's output goes, as a path whose extension .npz replaces."""
    if not path.exists():  # a broken link or a missing file: listed so that the run reports it
        return VideoEntry(path.absolute(), name, 0, 0)
    stat = path.stat()
    return VideoEntry(path.absolute(), name, stat.st_size, stat.st_mtime_ns)


# Ids name files: letters, digits and `_-.=+,@`, not starting with a dot.
_ID = re.compile(r"[A-Za-z0-9_\-=+,@][A-Za-z0-9_.\-=+,@]*")
LIST_COLUMNS = ("path", "id")


def read_video_list(list_file: Path) -> list[VideoEntry]:
    """The videos of a list file, in its order: a .csv with a `path` column and optionally an
    `id` column, or a text file with one path per line, optionally followed by a tab and an
    id. Relative paths are relative to the list file's folder; blank lines and lines starting
    with `#` are skipped. A video with an id writes `<id>.npz` (the flat layout
    Moment-DETR-style loaders look up); without one, the path as listed (relative) or the file
    name (absolute) names its output."""
    list_file = Path(list_file)
    try:
        text = list_file.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise VfeError(f"--input_list {str(list_file)!r} cannot be read: {error}") from error
    rows: list[tuple[int, str, str | None]] = []  # (line, path, id)
    if list_file.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if "path" not in (reader.fieldnames or []):
            raise VfeError(
                f"--input_list {str(list_file)!r}: a .csv needs a 'path' column (and may have "
                f"an 'id' column); its columns are {reader.fieldnames}"
            )
        for number, row in enumerate(reader, start=2):
            rows.append(
                (number, (row["path"] or "").strip(), (row.get("id") or "").strip() or None)
            )
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            path, video_id = _split_line(line)
            rows.append((number, path, video_id))
    entries = []
    for number, path_text, video_id in rows:
        where = f"--input_list {str(list_file)!r} line {number}"
        if not path_text:
            raise VfeError(f"{where}: no path")
        if is_url(path_text):
            entries.append(_remote_entry(path_text, video_id, where))
            continue
        path = Path(path_text)
        if not path.is_absolute():
            path = list_file.parent / path
        if video_id is not None:
            if not _ID.fullmatch(video_id):
                raise VfeError(
                    f"{where}: id {video_id!r} cannot name a file (letters, digits and _-.=+,@, "
                    "not starting with a dot)"
                )
            name = video_id + (path.suffix or ".video")
        elif Path(path_text).is_absolute() or ".." in Path(path_text).parts:
            name = path.name
        else:
            name = Path(path_text).as_posix()
        entries.append(_entry(path, name))
    if not entries:
        raise VfeError(f"--input_list {str(list_file)!r} lists no videos")
    check_distinct_outputs(entries)
    return entries


def _remote_entry(url: str, video_id: str | None, where: str) -> VideoEntry:
    """A listed video at an fsspec URL: named by its id, else by its file name."""
    import fsspec

    if video_id is not None and not _ID.fullmatch(video_id):
        raise VfeError(
            f"{where}: id {video_id!r} cannot name a file (letters, digits and _-.=+,@, not "
            "starting with a dot)"
        )
    try:
        filesystem, path = fsspec.core.url_to_fs(url)
        info = filesystem.info(path)
    except FileNotFoundError:  # listed so that the run reports it, as a missing file
        return VideoEntry(RemoteFile(url), _remote_name(url, video_id), 0, 0)
    except (ImportError, ValueError, *storage_errors()) as error:
        raise VfeError(f"{where}: {url!r} cannot be read: {error}") from error
    return VideoEntry(
        RemoteFile(url), _remote_name(url, video_id), int(info.get("size") or 0),
        remote_mtime_ns(info),
    )  # fmt: skip


def _remote_name(url: str, video_id: str | None) -> str:
    name = PurePosixPath(url.split("?", 1)[0]).name
    path_inside(Path("."), name, f"file name of {url!r}", folders=False)
    return name if video_id is None else video_id + (PurePosixPath(name).suffix or ".video")


def _split_line(line: str) -> tuple[str, str | None]:
    """`path` or `path<TAB>id` -> (path, id or None); a comma may be part of a file name."""
    path, _, video_id = line.partition("\t")
    return path.strip(), video_id.strip() or None


LAYOUTS = ("tree", "flat")


def flat_layout(entries: list[VideoEntry]) -> list[VideoEntry]:
    """Every output directly in the output folder, named by the video's file name (its id):
    `a/b/x.mp4` -> `x.npz`. Two videos of one name are an error."""
    flat = [
        VideoEntry(e.path, Path(e.relative_path).name, e.size_bytes, e.mtime_ns) for e in entries
    ]
    check_distinct_outputs(flat, full_paths=True)
    return flat
