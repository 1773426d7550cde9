"""The `--model.weights` choice shared by all backbones: official, random, or a local file."""

import urllib.error
from pathlib import Path

import torch

from vfe.errors import VfeError
from vfe.messages import warn
from vfe.planning.provenance import sha256_of_file

RANDOM = "random"


def resolve_weights_file(weights: str | None, model_label: str) -> Path | None:
    """None for official or random weights; otherwise the checked path of a local checkpoint."""
    if weights is None:
        return None
    if weights == RANDOM:
        warn(
            f"{model_label}: using RANDOM weights; features are meaningless "
            "(for tests and benchmarks only)"
        )
        return None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise VfeError(
            f"--model.weights {weights!r}: no such file; pass a local checkpoint file, "
            f"'{RANDOM}', or leave it unset for the official pretrained weights"
        )
    return path


def weights_record(
    weights: str | None, official_name: str, official_file: Path, official_sha256: str | None
) -> dict[str, str]:
    """Provenance of loaded weights: `weights` (where they came from) and `weights_sha256`.

    `official_sha256` is the checksum the upstream downloader verifies (CLIP's URLs carry it);
    without one the cached official file is hashed.
    """
    if weights == RANDOM:
        return {"weights": RANDOM, "weights_sha256": RANDOM}
    if weights is None:
        sha256 = official_sha256 or sha256_of_file(official_file)
        return {"weights": f"official {official_name} ({official_file})", "weights_sha256": sha256}
    path = Path(weights).expanduser().resolve()
    return {"weights": str(path), "weights_sha256": sha256_of_file(path)}


def download_official(url: str, destination: Path, sha256: str | None, label: str) -> None:
    """Put the official weights at `destination` unless they are there.

    Called from `prepare_data`, which Lightning runs on one process per node before the others
    load. The file appears at once, complete (download to a temporary, check, rename), so
    nodes sharing one cache never read half a file.
    """
    if destination.is_file():
        check_official_file(destination, sha256, url, label)
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(destination), hash_prefix=sha256, progress=False)
    except (urllib.error.URLError, OSError, RuntimeError) as error:  # RuntimeError: bad hash
        raise VfeError(
            f"could not get the official {label} weights ({error}). To run offline, put "
            f"{destination.name} in {destination.parent}/ or pass --model.weights "
            "/path/to/checkpoint"
        ) from error


def check_official_file(path: Path, sha256: str | None, url: str, label: str) -> None:
    """Refuse a file in the upstream cache that is not the official one (the upstream loader
    would only warn and try to download it again, which fails offline with a misleading
    message)."""
    if sha256 is None:
        return
    found = sha256_of_file(path)
    if found != sha256:
        raise VfeError(
            f"{path} is not the official {label} file: its sha256 is {found}, the official "
            f"one's is {sha256} ({url}). Replace it with the official file, or, if it is a "
            "checkpoint of your own, move it out of that cache and pass it with "
            "--model.weights FILE"
        )
