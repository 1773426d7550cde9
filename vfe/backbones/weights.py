"""The `--model.weights` choice shared by all backbones: official, random, or a local file."""

from pathlib import Path

from lightning.pytorch.utilities import rank_zero_warn

from vfe.errors import VfeError

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
