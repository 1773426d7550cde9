"""What made a feature file, stored in every .npz and compared before a rerun skips it.

Each .npz carries `provenance`, a JSON string (so `np.load(f)["features"]` users are
unaffected): the backbone, its weights and their sha256, its preprocessing, the clip grid, the
decoder, the precision, the library versions, and the video's size and modification time.
"""

import contextlib
import hashlib
import json
import os
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from vfe.data.paths import VideoEntry, video_fingerprint
from vfe.destinations import write_atomically

PROVENANCE_KEY = "provenance"
FORMAT_VERSION = 1
# Settings that determine the features, in the order a difference is reported. Precision and
# decoder are among them: no test shows features equal across them (bf16 is within cosine 0.99
# only, and decoders differ on the files of docs/output.md's table).
DETERMINING_SETTINGS = (
    "model",
    "arch",
    "weights_sha256",
    "preprocessing",
    "clip_length",
    "clip_stride",
    "tail",
    "convert_on",
    "grid_version",
    "decoder",
    "precision",
    "output_dtype",
)
# What files made before a setting was recorded were made with (output_dtype is recorded only
# when not float32).
SETTINGS_BEFORE_RECORDED = {
    "clip_stride": None,
    "tail": "keep",
    "convert_on": "workers",
    "output_dtype": "float32",
}
LIBRARIES = (
    "vfe",
    "torch",
    "torchvision",
    "lightning",
    "pytorchvideo",
    "clip-anytorch",
    "av",
    "open_clip_torch",
    "timm",
    "transformers",
)
_HASH_CHUNK_BYTES = 1 << 22


def _digests_folder() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "vfe" / "sha256"


def sha256_of_file(path: Path) -> str:
    """The file's sha256, remembered per path, size and modification time (weights files of a
    GB were hashed again at every run's start, on every rank): the same trust resume gives a
    video whose size and time are unchanged."""
    stat = Path(path).stat()
    key = f"{Path(path).resolve()}\n{stat.st_size}\n{stat.st_mtime_ns}"
    remembered = _digests_folder() / hashlib.sha256(key.encode()).hexdigest()
    try:
        known = remembered.read_text().strip()
    except OSError:  # not hashed yet (or the cache is unreadable): hash it
        known = ""
    if len(known) == 64:
        return known
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    found = digest.hexdigest()
    # Written whole or not at all (ranks and nodes may share the cache); a read-only cache only
    # costs the hashing next time.
    with contextlib.suppress(OSError):
        write_atomically(remembered, lambda file: file.write(found.encode()))
    return found


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def run_provenance(model: Any, data_settings: dict[str, Any], precision: str) -> dict[str, Any]:
    """Everything but the video: the backbone's own record (`Backbone.provenance()`), the data
    settings (`VideoDataModule.provenance()`) and the precision."""
    return {
        "format": FORMAT_VERSION,
        **model.provenance(),
        **data_settings,
        "precision": str(precision),
        "versions": library_versions(),
    }


def video_provenance(
    size_bytes: int,
    mtime_ns: int,
    fingerprint: str,
    decode_errors: int = 0,
    source_path: str | None = None,
) -> dict[str, Any]:
    """The video a file was made from: its size, modification time and a fingerprint of its
    bytes (`vfe.data.paths.video_fingerprint`); `decode_errors` where the decoder concealed
    errors in it (written only with --data.allow_concealed_errors); `source_path`, its
    absolute path when extracted (not compared: for `vfe search --report`'s thumbnails)."""
    video: dict[str, Any] = {
        "path": source_path,
        "size_bytes": size_bytes,
        "mtime_ns": mtime_ns,
        "fingerprint": fingerprint,
    }
    if decode_errors:
        video["decode_errors"] = decode_errors
    return {"video": video}


def file_provenance(
    run_record: dict[str, Any], video: Any, source_path: str, run_id: str
) -> dict[str, Any]:
    """What one .npz records: the run's settings (`run_provenance`), the video
    (`video_provenance`) of a `vfe.output.assembly.FinishedVideo`, and, not compared on resume,
    the run that wrote it and how the video was decoded (segments, ranks, NVDEC frames, sparse
    or sequential)."""
    info = video.info
    record = {
        **run_record,
        **video_provenance(
            info.size_bytes, info.mtime_ns, info.fingerprint, video.decode_errors, source_path
        ),
        "run": run_id,
    }
    if info.num_segments > 1:
        record["video"] |= {"segments": info.num_segments, "ranks": info.num_ranks}
    if video.nvdec_frames is not None:  # decoded on cuda: by NVDEC, or FFmpeg's software
        record["video"]["nvdec_frames"] = video.nvdec_frames
    record["video"]["decode"] = video.decode  # sparse or sequential: the same frames
    if "sample_rate_hz" in record.get("preprocessing", {}) and video.audio_seconds is not None:
        record["video"]["audio_seconds"] = round(video.audio_seconds, 6)  # an audio backbone's
    return record


def encode(provenance: dict[str, Any]) -> np.ndarray:
    """The value stored under `PROVENANCE_KEY`: a 0-d unicode array (no pickle needed)."""
    return np.array(json.dumps(provenance, sort_keys=True))


def read_provenance(npz_path: Path) -> dict[str, Any] | None:
    """The provenance of a feature file, or None for files made before vfe recorded it."""
    with np.load(npz_path) as saved:
        if PROVENANCE_KEY not in saved.files:
            return None
        return json.loads(str(saved[PROVENANCE_KEY]))


def setting_differences(name: str, old: Any, new: Any, limit: int = 3) -> list[str]:
    """`name.key: old (file) -> new (now)` for each differing value, nested settings (a
    preprocessing dict) down to the keys that differ, at most `limit` of them."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [f"{name}: {old!r} (file) -> {new!r} (now)"]
    lines: list[str] = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            lines += setting_differences(f"{name}.{key}", old.get(key), new.get(key), limit)
    return lines[:limit]


def first_difference(
    existing: dict[str, Any], wanted: dict[str, Any], video: VideoEntry
) -> str | None:
    """The first setting (or the video itself) that differs, as `name: old -> new`.

    The video is the same if its size and modification time are; if only the time differs (a
    copied or touched dataset), its bytes are compared by fingerprint.
    """
    existing = {**SETTINGS_BEFORE_RECORDED, **existing}
    wanted = {**SETTINGS_BEFORE_RECORDED, **wanted}
    for key in DETERMINING_SETTINGS:
        if existing.get(key) != wanted.get(key):
            return "; ".join(setting_differences(key, existing.get(key), wanted.get(key)))
    recorded = existing.get("video", {})
    if recorded.get("size_bytes") != video.size_bytes:
        return (
            f"the video changed since (size {recorded.get('size_bytes')} -> "
            f"{video.size_bytes} bytes)"
        )
    if recorded.get("mtime_ns") == video.mtime_ns:
        return None
    modified = (
        f"modified {_local_time(recorded.get('mtime_ns'))} then, {_local_time(video.mtime_ns)} now"
    )
    if "fingerprint" not in recorded:
        return f"the video was {modified}, and the file records no fingerprint to compare with"
    try:
        fingerprint = video_fingerprint(video.path)
    except OSError as error:
        return f"the video cannot be read to compare its bytes ({error})"
    if fingerprint != recorded["fingerprint"]:
        return f"the video's bytes changed since (same size; {modified})"
    return None


def _local_time(mtime_ns: int | None) -> str:
    if mtime_ns is None:
        return "unknown"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(mtime_ns / 1e9))
