"""A features folder's clips as one L2-normalised matrix on disk, built once and reused.

`<features_dir>/.vfe-search/` (or, where the folder is not writable, a folder of its own under
`~/.cache/vfe/search/`) holds `features.f32` (`(num_clips, D)` float32, row-normalised,
read memory-mapped), `clips.npy` (per row: video number, start and end seconds) and
`index.json` (the videos, the model, and a digest of the folder's files: any file added,
removed or rewritten makes the index be rebuilt).
"""

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vfe.data.paths import require_feature_files
from vfe.errors import VfeError
from vfe.output.read_back import feature_file_samples, is_shard_folder, shard_samples
from vfe.planning.provenance import PROVENANCE_KEY
from vfe.text.command import MODEL_KEYS

INDEX_DIR_NAME = ".vfe-search"  # one of `vfe.destinations.RESERVED_NAMES`
INDEX_VERSION = 1
CLIP_DTYPE = np.dtype(
    [("video", np.int32), ("start_seconds", np.float64), ("end_seconds", np.float64)]
)
SCORE_CHUNK_ROWS = 1 << 20  # rows scored at once (bounds memory for any folder size)


@dataclass
class ClipIndex:
    features: np.ndarray  # (num_clips, D) float32 memmap, rows L2-normalised
    clips: np.ndarray  # (num_clips,) CLIP_DTYPE
    videos: list[dict[str, Any]]  # per video: relative path (no .npz) and source path
    model: dict[str, Any]  # model, arch, weights_sha256, options (as `vfe text` reads them)

    def rows_of(self, video: int) -> np.ndarray:
        return np.flatnonzero(self.clips["video"] == video)


def folder_digest(files: list[Path], features_dir: Path) -> str:
    """sha256 over each file's relative path, size and modification time."""
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(
            f"{path.relative_to(features_dir)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()
        )
    return digest.hexdigest()


def index_dir_for(features_dir: Path) -> Path:
    """Beside the features, or in the user's cache for a read-only (shared) folder."""
    if os.access(features_dir, os.W_OK):
        return features_dir / INDEX_DIR_NAME
    key = hashlib.sha256(str(features_dir.resolve()).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    index_dir = cache / "vfe" / "search" / key
    index_dir.parent.mkdir(parents=True, exist_ok=True)
    return index_dir


def load_index(features_dir: Path) -> ClipIndex:
    """The folder's index: read if its digest is current, else built (and saved) first."""
    features_dir = Path(features_dir)
    shards = is_shard_folder(features_dir)
    if shards:  # a folder of output shards: its data and stats files say what it holds
        files = sorted(p for p in features_dir.iterdir() if p.is_file() and p.name[0] != ".")
    else:
        files = require_feature_files(features_dir)
    digest = folder_digest(files, features_dir)
    index_dir = index_dir_for(features_dir)
    for _ in range(3):  # another search may swap the index in between
        meta = _current_meta(index_dir, digest)
        if meta is None:
            if shards:
                samples = shard_samples(features_dir)
            else:
                samples = feature_file_samples(features_dir, files)
            _build(features_dir, samples, digest, index_dir, shards)
            meta = _current_meta(index_dir, digest)
        if meta is not None:
            with contextlib.suppress(FileNotFoundError):
                return _open(index_dir, meta)
    raise VfeError(f"the search index {index_dir} keeps changing; is another search rebuilding it?")


def _current_meta(index_dir: Path, digest: str) -> dict[str, Any] | None:
    """The index's description if it is there and made from the folder as it is now."""
    try:
        meta = json.loads((index_dir / "index.json").read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    if meta.get("digest") == digest and meta.get("version") == INDEX_VERSION:
        return meta
    return None


def _open(index_dir: Path, meta: dict[str, Any]) -> ClipIndex:
    clips = np.load(index_dir / "clips.npy")
    shape = (len(clips), int(meta["dim"]))
    features = np.memmap(index_dir / "features.f32", dtype=np.float32, mode="r", shape=shape)
    return ClipIndex(features, clips, meta["videos"], meta["model"])


def _build(
    features_dir: Path,
    samples: Iterator[tuple[str, str, dict]],
    digest: str,
    index_dir: Path,
    shards: bool = False,
) -> None:
    """Written in a folder of its own (made exclusively), then swapped into place: two searches
    rebuilding at once each build their own, and the one that finds a current index in place
    keeps it and drops its own."""
    building = Path(tempfile.mkdtemp(prefix=f".{index_dir.name}.", dir=index_dir.parent))
    clips: list[np.ndarray] = []
    videos: list[dict[str, Any]] = []
    model: dict[str, Any] | None = None
    dim = None
    with open(building / "features.f32", "wb") as matrix:
        for number, (video_name, path, arrays) in enumerate(samples):
            try:
                features = arrays["features"].astype(np.float32)
                windows = arrays["timestamps"]
                provenance = json.loads(str(arrays[PROVENANCE_KEY]))
            except (KeyError, ValueError) as error:
                raise VfeError(f"{path} cannot be read as vfe features ({error})") from error
            record = {name: provenance.get(name) for name in (*MODEL_KEYS, "options")}
            if model is None:
                model, dim = record, features.shape[1]
            elif any(record[name] != model[name] for name in MODEL_KEYS):
                made = [record[name] for name in MODEL_KEYS]
                others = [model[name] for name in MODEL_KEYS]
                raise VfeError(
                    f"{str(features_dir)!r} mixes models: {path} was made with {made}, others "
                    f"with {others}; search one backbone's folder"
                )
            norms = np.linalg.norm(features, axis=1, keepdims=True)
            matrix.write((features / np.maximum(norms, 1e-12)).tobytes())
            rows = np.zeros(len(features), CLIP_DTYPE)
            rows["video"], rows["start_seconds"], rows["end_seconds"] = number, *windows.T
            clips.append(rows)
            videos.append(
                {
                    # a shard's sample: `<shard>.tar/<key>.npz` (or `<shard>.parquet#<key>`)
                    "features_file": path if shards else f"{video_name}.npz",
                    "source": provenance.get("video", {}).get("path"),
                }
            )
    np.save(building / "clips.npy", np.concatenate(clips))
    meta = {
        "version": INDEX_VERSION,
        "digest": digest,
        "dim": dim,
        "model": model,
        "videos": videos,
    }
    (building / "index.json").write_text(json.dumps(meta))
    _swap_in(building, index_dir, digest)


def _swap_in(building: Path, index_dir: Path, digest: str) -> None:
    """Rename `building` to `index_dir`, moving an outdated index out of the way first."""
    try:
        for _ in range(3):
            try:
                os.rename(building, index_dir)  # fails while index_dir holds an index
                return
            except OSError as error:
                if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            if _current_meta(index_dir, digest) is not None:
                return  # another search built the same index meanwhile: use that one
            old = Path(tempfile.mkdtemp(prefix=f".{index_dir.name}.old.", dir=index_dir.parent))
            with contextlib.suppress(FileNotFoundError):  # another search moved it already
                os.rename(index_dir, old / "index")
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(building, ignore_errors=True)


def top_clips(index: ClipIndex, query: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """`(rows, scores)` of the `top_k` clips by cosine with `query (D,)`, best first (ties: the
    earlier row first)."""
    query = query.astype(np.float32) / max(float(np.linalg.norm(query)), 1e-12)
    best_rows = np.empty(0, np.int64)
    best_scores = np.empty(0, np.float32)
    for start in range(0, len(index.features), SCORE_CHUNK_ROWS):
        scores = np.asarray(index.features[start : start + SCORE_CHUNK_ROWS]) @ query
        rows = np.arange(start, start + len(scores))
        best_rows = np.concatenate([best_rows, rows])
        best_scores = np.concatenate([best_scores, scores])
        if len(best_scores) > top_k:
            order = np.lexsort((best_rows, -best_scores))[:top_k]
            best_rows, best_scores = best_rows[order], best_scores[order]
    order = np.lexsort((best_rows, -best_scores))[:top_k]
    return best_rows[order], best_scores[order]


def video_scores(index: ClipIndex, video: int, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(clips, scores)`: one video's clip windows and their cosine with `query`."""
    rows = index.rows_of(video)
    query = query.astype(np.float32) / max(float(np.linalg.norm(query)), 1e-12)
    return index.clips[rows], np.asarray(index.features[rows]) @ query
