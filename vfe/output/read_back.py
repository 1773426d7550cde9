"""A features folder read back sample by sample, `(name, where, arrays)`, for the commands that
read features (`vfe pack`, `vfe search`, `vfe text --like`): its feature files, or for a folder
of output shards (`vfe.output.shard_sink`), local or at an fsspec URL, the samples of its
finished shards (those with their stats), in the shards' order."""

import io
import json
import posixpath
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vfe.decoding.source import StorageReader, storage_errors
from vfe.destinations import is_url, join_location
from vfe.errors import VfeError
from vfe.planning.shard_plan import STATS_SUFFIX

SampleArrays = dict[str, np.ndarray]  # a feature file's arrays: features, timestamps, ...


def feature_file_samples(
    features_dir: Path, files: list[Path]
) -> Iterator[tuple[str, str, SampleArrays]]:
    """`(name, where, arrays)` of each .npz, named by its path relative to the folder."""
    for path in files:
        try:
            with np.load(path) as saved:
                arrays = {key: saved[key] for key in saved.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise VfeError(f"{path} cannot be read as vfe features ({error})") from error
        yield path.relative_to(features_dir).with_suffix("").as_posix(), str(path), arrays


def shard_stats(folder: "str | Path") -> list[tuple[str, dict[str, Any]]]:
    """`(shard name, stats)` of each finished shard in a folder of output shards, local or at
    an fsspec URL (`s3://bucket/feats`), in name order; none for a folder without them."""
    import fsspec

    found = []
    try:
        if is_url(str(folder)):
            filesystem, path = fsspec.core.url_to_fs(str(folder))
            for stats_path in sorted(filesystem.glob(f"{path.rstrip('/')}/*{STATS_SUFFIX}")):
                name = posixpath.basename(stats_path)[: -len(STATS_SUFFIX)]
                found.append((name, json.loads(filesystem.cat_file(stats_path))))
        else:
            for stats_path in sorted(Path(folder).glob(f"*{STATS_SUFFIX}")):
                found.append(
                    (stats_path.name[: -len(STATS_SUFFIX)], json.loads(stats_path.read_text()))
                )
    except (ImportError, ValueError, *storage_errors()) as error:
        raise VfeError(f"{folder} cannot be read ({type(error).__name__}: {error})") from error
    return found


def is_shard_folder(folder: "str | Path") -> bool:
    """A folder a run over shards wrote (local, or at a URL): it holds shard stats."""
    if is_url(str(folder)):
        return bool(shard_stats(folder))
    return Path(folder).is_dir() and next(Path(folder).glob(f"*{STATS_SUFFIX}"), None) is not None


def shard_samples(folder: "str | Path") -> Iterator[tuple[str, str, SampleArrays]]:
    """`(key, where, arrays)` of every sample of the folder's finished shards; `where` names
    the shard and member, for messages. Shards at URLs are streamed, never copied whole."""
    for name, stats in shard_stats(folder):
        if stats.get("format", "webdataset") == "parquet":
            yield from _parquet_samples(join_location(str(folder), f"{name}.parquet"))
        else:
            yield from _tar_samples(join_location(str(folder), f"{name}.tar"))


def _tar_samples(location: str) -> Iterator[tuple[str, str, SampleArrays]]:
    shard = posixpath.basename(location)
    try:
        with (
            StorageReader(location) as stream,
            tarfile.open(fileobj=stream, mode="r|") as archive,
        ):
            for member in archive:
                if not member.isfile() or not member.name.endswith(".npz"):
                    continue
                data = archive.extractfile(member).read()
                with np.load(io.BytesIO(data)) as saved:
                    arrays = {key: saved[key] for key in saved.files}
                yield member.name[: -len(".npz")], f"{shard}/{member.name}", arrays
    except (OSError, tarfile.TarError, ValueError) as error:
        raise VfeError(f"{location} cannot be read ({error})") from error


def _parquet_samples(location: str) -> Iterator[tuple[str, str, SampleArrays]]:
    import pyarrow.parquet as pq

    shard = posixpath.basename(location)
    try:
        table = pq.ParquetFile(StorageReader(location))
        for group in range(table.num_row_groups):
            for row in table.read_row_group(group).to_pylist():
                features = np.array(row["features"], dtype=np.float32).reshape(
                    len(row["features"]), -1
                )
                arrays = {
                    "features": features,
                    "timestamps": np.array(row["timestamps"], dtype=np.float64).reshape(-1, 2),
                    "fps": np.float64(row["fps"]),
                    "clip_length": np.float64(row["clip_length"]),
                    "provenance": np.array(row["provenance"]),
                }
                yield row["key"], f"{shard}#{row['key']}", arrays
    except (OSError, ValueError) as error:
        raise VfeError(f"{location} cannot be read ({error})") from error
