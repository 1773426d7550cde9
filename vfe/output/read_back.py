"""A features folder read back sample by sample, `(name, where, arrays)`, for the commands that
read features (`vfe pack`, `vfe search`, `vfe text --like`): its feature files, or for a folder
of output shards (`vfe.output.shard_sink`) the samples of its finished shards (those with
their stats), in the shards' order."""

import io
import json
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

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


def is_shard_folder(folder: Path) -> bool:
    """A folder a run over shards wrote: it holds shard stats."""
    return Path(folder).is_dir() and next(Path(folder).glob(f"*{STATS_SUFFIX}"), None) is not None


def shard_samples(folder: Path) -> Iterator[tuple[str, str, SampleArrays]]:
    """`(key, where, arrays)` of every sample of the folder's finished shards; `where` names
    the shard and member, for messages."""
    for stats_path in sorted(Path(folder).glob(f"*{STATS_SUFFIX}")):
        name = stats_path.name[: -len(STATS_SUFFIX)]
        output_format = json.loads(stats_path.read_text()).get("format", "webdataset")
        if output_format == "parquet":
            yield from _parquet_samples(Path(folder) / f"{name}.parquet")
        else:
            yield from _tar_samples(Path(folder) / f"{name}.tar")


def _tar_samples(path: Path) -> Iterator[tuple[str, str, SampleArrays]]:
    try:
        with tarfile.open(path) as archive:
            for member in archive:
                if not member.isfile() or not member.name.endswith(".npz"):
                    continue
                data = archive.extractfile(member).read()
                with np.load(io.BytesIO(data)) as saved:
                    arrays = {key: saved[key] for key in saved.files}
                yield member.name[: -len(".npz")], f"{path.name}/{member.name}", arrays
    except (OSError, tarfile.TarError, ValueError) as error:
        raise VfeError(f"{path} cannot be read ({error})") from error


def _parquet_samples(path: Path) -> Iterator[tuple[str, str, SampleArrays]]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
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
                yield row["key"], f"{path.name}#{row['key']}", arrays
    except (OSError, ValueError) as error:
        raise VfeError(f"{path} cannot be read ({error})") from error
