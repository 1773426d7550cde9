"""What made a feature file, stored in every .npz and compared before a rerun skips it.

Each .npz carries `provenance`, a JSON string (so `np.load(f)["features"]` users are
unaffected): the backbone, its weights and their sha256, its preprocessing, the clip grid, the
decoder, the precision, the library versions, and the video's size and modification time.
"""

import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

PROVENANCE_KEY = "provenance"
FORMAT_VERSION = 1
# Settings that determine the features, in the order a difference is reported. Precision and
# decoder are among them: no test shows features equal across them (bf16 is within cosine 0.99
# only, and decoders differ on the files of the README's table).
DETERMINING_SETTINGS = (
    "model",
    "arch",
    "weights_sha256",
    "preprocessing",
    "clip_length",
    "grid_version",
    "decoder",
    "precision",
)
LIBRARIES = ("vfe", "torch", "torchvision", "lightning", "pytorchvideo", "clip-anytorch", "av")
_HASH_CHUNK_BYTES = 1 << 22


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


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


def video_provenance(size_bytes: int, mtime_ns: int) -> dict[str, Any]:
    return {"video": {"size_bytes": size_bytes, "mtime_ns": mtime_ns}}


def encode(provenance: dict[str, Any]) -> np.ndarray:
    """The value stored under `PROVENANCE_KEY`: a 0-d unicode array (no pickle needed)."""
    return np.array(json.dumps(provenance, sort_keys=True))


def read_provenance(npz_path: Path) -> dict[str, Any] | None:
    """The provenance of a feature file, or None for files made before vfe recorded it."""
    with np.load(npz_path) as saved:
        if PROVENANCE_KEY not in saved.files:
            return None
        return json.loads(str(saved[PROVENANCE_KEY]))


def first_difference(
    existing: dict[str, Any], wanted: dict[str, Any], size_bytes: int, mtime_ns: int
) -> str | None:
    """The first setting (or the video itself) that differs, as `name: old -> new`."""
    for key in DETERMINING_SETTINGS:
        if existing.get(key) != wanted.get(key):
            return f"{key}: {existing.get(key)!r} in the file, {wanted.get(key)!r} now"
    video = existing.get("video", {})
    if (video.get("size_bytes"), video.get("mtime_ns")) != (size_bytes, mtime_ns):
        return (
            f"the video changed since (size {video.get('size_bytes')} -> {size_bytes} bytes, "
            f"modified {video.get('mtime_ns')} -> {mtime_ns} ns)"
        )
    return None
