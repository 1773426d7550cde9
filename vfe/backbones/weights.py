"""The `--model.weights` choice shared by all backbones: official, random, or a local file."""

from pathlib import Path

from lightning.pytorch.utilities import rank_zero_warn

from vfe.errors import VfeError
from vfe.provenance import sha256_of_file

RANDOM = "random"


def resolve_weights_file(weights: str | None, model_label: str) -> Path | None:
    """None for official or random weights; otherwise the checked path of a local checkpoint."""
    if weights is None:
        return None
    if weights == RANDOM:
        rank_zero_warn(
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
