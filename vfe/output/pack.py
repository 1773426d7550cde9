"""`vfe pack DIR OUT.h5` / `vfe unpack FILE.h5 DIR`: a features folder (or a folder of output
shards) as one HDF5 file and back.

The HDF5 file is the cache UniVTG's scripts read (`use_cache=1`): one dataset per video, named
by its path relative to the folder without `.npz` (an id in the flat layout), holding the
array of one key (`features`, or `last_hidden_state` for text); the file's other keys
(timestamps, fps, clip_length, provenance, ...) are attributes of that dataset, so `unpack`
writes the same .npz files back.
"""

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np

from vfe.data.paths import require_feature_files
from vfe.destinations import TEMPORARY_SUFFIX, is_url, path_inside, temporary_name_prefix
from vfe.errors import ExitCode, VfeError
from vfe.optional import import_extra
from vfe.output.npz import save_npz_atomically
from vfe.output.read_back import feature_file_samples, is_shard_folder, shard_samples

KEY_ATTRIBUTE = "vfe_key"  # the file-level attribute naming the key each dataset holds


def _h5py(command: str) -> ModuleType:
    return import_extra("h5py", "hdf5", "", command)


def pack(
    features_dir: "str | Path", output_file: Path, key: str = "features", overwrite: bool = False
) -> int:
    """Write every .npz under `features_dir` (or every sample of a folder of output shards,
    local or at an fsspec URL, named by its key) into `output_file`; the number of videos. An
    existing `output_file` is replaced only if `overwrite`; it appears complete or not at all."""
    h5py = _h5py("pack")
    output_file = Path(output_file)
    if output_file.exists() and not overwrite:
        raise VfeError(f"{str(output_file)!r} exists; pass --overwrite to replace it")
    if is_shard_folder(features_dir):
        samples = shard_samples(features_dir)
    elif is_url(str(features_dir)):
        raise VfeError(
            f"{features_dir} holds no finished output shards (*.stats.json); folders of "
            "feature files are packed from a local copy"
        )
    else:
        features_dir = Path(features_dir)
        samples = feature_file_samples(features_dir, require_feature_files(features_dir))
    output_file.parent.mkdir(parents=True, exist_ok=True)
    descriptor, partial = tempfile.mkstemp(
        prefix=temporary_name_prefix(output_file), suffix=TEMPORARY_SUFFIX, dir=output_file.parent
    )
    os.close(descriptor)  # created exclusively; h5py reopens the file this process owns
    try:
        count = _write_packed(h5py, samples, Path(partial), key)
        os.replace(partial, output_file)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
    return count


def _write_packed(
    h5py: ModuleType, samples: Iterator[tuple[str, str, dict]], partial: Path, key: str
) -> int:
    # libver "latest": attributes of any size (a long video's timestamps pass 64 KiB).
    count = 0
    with h5py.File(partial, "w", libver="latest") as packed:
        packed.attrs[KEY_ATTRIBUTE] = key
        for name, where, arrays in samples:
            if key not in arrays:
                raise VfeError(f"{where} has no {key!r} (its keys: {', '.join(arrays)})")
            if name in packed:
                raise VfeError(f"{where}: a second video named {name!r} (keys must be unique)")
            dataset = packed.create_dataset(name, data=arrays[key])
            for other, value in arrays.items():
                if other != key:
                    dataset.attrs[other] = str(value) if value.dtype.kind == "U" else value
            count += 1
    return count


def unpack(packed_file: Path, output_dir: Path) -> int:
    """Write each dataset of `packed_file` back as `<output_dir>/<name>.npz`; how many. An
    existing .npz is never replaced: the command stops before writing any."""
    h5py = _h5py("unpack")
    names: list[str] = []
    try:
        packed = h5py.File(packed_file, "r")
    except OSError as error:
        raise VfeError(f"{str(packed_file)!r} cannot be read as HDF5 ({error})") from error
    with packed:
        key = str(packed.attrs.get(KEY_ATTRIBUTE, "features"))
        packed.visititems(lambda name, item: names.append(name) if hasattr(item, "shape") else None)
        # Names come from the file: each is checked before anything is written.
        targets = {
            name: path_inside(Path(output_dir), name, "HDF5 dataset name", suffix=".npz")
            for name in names
        }
        existing = [name for name in names if targets[name].exists()]
        if existing:
            raise VfeError(
                f"{len(existing)} file(s) exist already under {str(output_dir)!r} (first: "
                f"{existing[0]}.npz); unpack into an empty folder"
            )
        for name in names:
            dataset = packed[name]
            arrays = {key: dataset[()]}
            for other, value in dataset.attrs.items():
                arrays[other] = np.array(value)
            save_npz_atomically(targets[name], arrays)
    return len(names)


def main(args: list[str]) -> None:
    """`vfe pack DIR OUT.h5 [--key K]` and `vfe unpack FILE.h5 DIR` (`args[0]` is the command)."""
    command, rest = args[0], args[1:]
    parser = argparse.ArgumentParser(prog=f"vfe {command}")
    if command == "pack":
        parser.description = (
            "A features folder as one HDF5 file: a dataset per video named by its relative "
            "path (UniVTG's use_cache files), the other keys as its attributes."
        )
        parser.add_argument("features_dir", help="a features folder, local or (shards) a URL")
        parser.add_argument("output_file", type=Path)
        parser.add_argument(
            "--key",
            default="features",
            help="the array each dataset holds (text: last_hidden_state)",
        )
        parser.add_argument(
            "--overwrite", action="store_true", help="replace OUTPUT_FILE if it exists"
        )
    else:
        parser.description = "A packed HDF5 file back into one .npz per video."
        parser.add_argument("packed_file", type=Path)
        parser.add_argument("output_dir", type=Path)
    options = parser.parse_args(rest)
    try:
        if command == "pack":
            count = pack(options.features_dir, options.output_file, options.key, options.overwrite)
            print(f"vfe: packed {count} files into {options.output_file}", file=sys.stderr)
        else:
            count = unpack(options.packed_file, options.output_dir)
            print(f"vfe: wrote {count} files under {options.output_dir}", file=sys.stderr)
    except VfeError as error:
        print(f"vfe: error: {error}", file=sys.stderr)
        sys.exit(ExitCode.USAGE)
