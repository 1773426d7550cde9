"""`vfe npy DIR OUT_DIR [--key K]`: each .npz's array as `OUT_DIR/<name>.npy`, for loaders that
read bare arrays named by video (Lighthouse's PANN features: `features/<dataset>/pann/{vid}.npy`).

The .npy files carry no provenance: the .npz files stay the record of how they were made.
Nothing existing is replaced unless asked; each file appears complete or not at all.
"""

import argparse
import sys
import zipfile
from pathlib import Path

import numpy as np

from vfe.data.paths import require_feature_files
from vfe.destinations import path_inside, write_atomically
from vfe.errors import ExitCode, VfeError


def export_npy(
    features_dir: Path, output_dir: Path, key: str = "features", overwrite: bool = False
) -> int:
    """Write every .npz under `features_dir` as `<relative name>.npy` under `output_dir`
    (its `key` array); the number of files. Checked before anything is written: every target
    stays inside `output_dir` and, unless `overwrite`, does not exist yet."""
    features_dir, output_dir = Path(features_dir), Path(output_dir)
    files = require_feature_files(features_dir)
    targets = []
    for path in files:  # names, keys and existing files, before anything is written
        name = path.relative_to(features_dir).with_suffix("").as_posix()
        target = path_inside(output_dir, name, "file name", suffix=".npy")
        if target.exists() and not overwrite:
            raise VfeError(f"{str(target)!r} exists; pass --overwrite to replace it")
        with _opened(path) as saved:  # reads the archive's listing only
            if key not in saved.files:
                raise VfeError(f"{path} has no {key!r} (its keys: {', '.join(saved.files)})")
        targets.append(target)
    for path, target in zip(files, targets, strict=True):
        with _opened(path) as saved:
            array = saved[key]
        write_atomically(target, lambda file, array=array: np.save(file, array))
    return len(files)


def _opened(path: Path) -> "np.lib.npyio.NpzFile":
    try:
        return np.load(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise VfeError(f"{path} cannot be read ({error})") from error


def main(args: list[str]) -> None:
    """`vfe npy DIR OUT_DIR [--key K] [--overwrite]`."""
    parser = argparse.ArgumentParser(
        prog="vfe npy",
        description="Each .npz's array as OUT_DIR/<name>.npy (Lighthouse reads its PANN "
        "features so); the .npz files keep the provenance.",
    )
    parser.add_argument("features_dir", type=Path, help="a folder of .npz feature files")
    parser.add_argument("output_dir", type=Path, help="where the .npy files go")
    parser.add_argument("--key", default="features", help="the array to save (default features)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing .npy files")
    options = parser.parse_args(args)
    try:
        count = export_npy(options.features_dir, options.output_dir, options.key, options.overwrite)
    except VfeError as error:
        print(f"vfe: error: {error}", file=sys.stderr)
        sys.exit(ExitCode.USAGE)
    print(f"vfe: wrote {count} .npy files under {options.output_dir}", file=sys.stderr)
