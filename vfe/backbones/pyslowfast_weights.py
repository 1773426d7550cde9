"""PySlowFast's SlowFast R50 8x8 checkpoints in PyTorchVideo's `slowfast_r50`.

Two kinds of file: PySlowFast's Caffe2 pickle `SLOWFAST_8x8_R50.pkl` (the weights HERO's
extractor, and so the released QVHighlights / Moment-DETR / Lighthouse features, used), a
Python-2 pickle `{"blobs": {name: array}}`; and PySlowFast's own PyTorch checkpoints
(`{"model_state": ...}` under PySlowFast's module names). The network is the same as
PyTorchVideo's `slowfast_r50`; only the names differ. Both are mapped by one table built from
the architecture (`name_table`), and the conversion is exact: every blob used, every tensor
filled, every shape equal, else a one-line error naming the first mismatch.

A Caffe2 pickle is read by a restricted unpickler that builds only dicts, strings, numbers and
numpy arrays: a pickle naming anything else is refused before it runs (a plain `pickle.load` of
a user's file would run whatever it names).
"""

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vfe.errors import VfeError

STAGE_DEPTHS = (3, 4, 6, 3)  # residual blocks of res2..res5 (ResNet-50)
# PyTorchVideo's BatchNorm tensors and Caffe2's blob suffixes (`riv` holds the running variance).
_BN_SUFFIXES = {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv"}
# What a Caffe2 pickle may name: numpy's array and dtype reconstruction, nothing else.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


def name_table() -> dict[str, tuple[str, str]]:
    """PyTorchVideo `slowfast_r50` tensor name -> (Caffe2 blob name, PySlowFast name), for
    every tensor but BatchNorm's batch counters: 552 for R50."""
    table: dict[str, tuple[str, str]] = {}

    def conv(ours: str, caffe2: str, pyslowfast: str) -> None:
        table[f"{ours}.weight"] = (f"{caffe2}_w", f"{pyslowfast}.weight")

    def norm(ours: str, caffe2: str, pyslowfast: str) -> None:
        for key, suffix in _BN_SUFFIXES.items():
            table[f"{ours}.{key}"] = (f"{caffe2}_{suffix}", f"{pyslowfast}.{key}")

    for pathway, prefix in ((0, ""), (1, "t_")):  # slow, fast ("t_" in Caffe2)
        stem = f"blocks.0.multipathway_blocks.{pathway}"
        conv(f"{stem}.conv", f"{prefix}conv1", f"s1.pathway{pathway}_stem.conv")
        norm(f"{stem}.norm", f"{prefix}res_conv1_bn", f"s1.pathway{pathway}_stem.bn")
        for stage, depth in enumerate(STAGE_DEPTHS, start=2):
            for block in range(depth):
                ours = f"blocks.{stage - 1}.multipathway_blocks.{pathway}.res_blocks.{block}"
                caffe2 = f"{prefix}res{stage}_{block}"
                pyslowfast = f"s{stage}.pathway{pathway}_res{block}"
                if block == 0:  # the projection shortcut
                    conv(f"{ours}.branch1_conv", f"{caffe2}_branch1", f"{pyslowfast}.branch1")
                    norm(f"{ours}.branch1_norm", f"{caffe2}_branch1_bn", f"{pyslowfast}.branch1_bn")
                for part in "abc":
                    conv(
                        f"{ours}.branch2.conv_{part}",
                        f"{caffe2}_branch2{part}",
                        f"{pyslowfast}.branch2.{part}",
                    )
                    norm(
                        f"{ours}.branch2.norm_{part}",
                        f"{caffe2}_branch2{part}_bn",
                        f"{pyslowfast}.branch2.{part}_bn",
                    )
    # Fast-to-slow fusions after the stem and after res2, res3, res4.
    conv("blocks.0.multipathway_fusion.conv_fast_to_slow", "t_pool1_subsample", "s1_fuse.conv_f2s")
    norm("blocks.0.multipathway_fusion.norm", "t_pool1_subsample_bn", "s1_fuse.bn")
    for stage, depth in zip((2, 3, 4), STAGE_DEPTHS, strict=False):
        caffe2 = f"t_res{stage}_{depth - 1}_branch2c_bn_subsample"
        fusion = f"blocks.{stage - 1}.multipathway_fusion"
        conv(f"{fusion}.conv_fast_to_slow", caffe2, f"s{stage}_fuse.conv_f2s")
        norm(f"{fusion}.norm", f"{caffe2}_bn", f"s{stage}_fuse.bn")
    table["blocks.6.proj.weight"] = ("pred_w", "head.projection.weight")
    table["blocks.6.proj.bias"] = ("pred_b", "head.projection.bias")
    return table


class _Caffe2Unpickler(pickle.Unpickler):
    """Builds dicts, strings, numbers and numpy arrays; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise VfeError(
                f"refused to read it: the pickle names {module}.{name}, which a Caffe2 "
                "checkpoint (a dict of numpy arrays) never holds"
            )
        if module.startswith("numpy.core.") and hasattr(np, "_core"):  # numpy 2's name
            module = module.replace("numpy.core.", "numpy._core.", 1)
        return super().find_class(module, name)


def read_caffe2_blobs(path: Path) -> dict[str, np.ndarray]:
    """The `blobs` of a Caffe2 pickle (Python 2's, read as latin-1), restricted as above."""
    try:
        with open(path, "rb") as file:
            content = _Caffe2Unpickler(file, encoding="latin1").load()
    except VfeError as error:
        raise VfeError(f"--model.weights {str(path)!r}: {error}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, OSError) as error:
        raise VfeError(
            f"--model.weights {str(path)!r} could not be read as a Caffe2 pickle: {error}"
        ) from error
    blobs = content.get("blobs") if isinstance(content, dict) else None
    if not isinstance(blobs, dict):
        raise VfeError(
            f"--model.weights {str(path)!r} is a pickle without `blobs` (a Caffe2 checkpoint "
            "is {'blobs': {name: array}})"
        )
    return blobs


def looks_like_pyslowfast(state: dict[str, Any]) -> bool:
    return "s1.pathway0_stem.conv.weight" in state


def to_pytorchvideo(
    tensors: dict[str, Any], naming: str, source: str, shapes: dict[str, torch.Size]
) -> dict[str, torch.Tensor]:
    """A state dict for `slowfast_r50` (whose tensor shapes are `shapes`) from `tensors` named
    the Caffe2 way (`naming="caffe2"`) or PySlowFast's; exact, else a one-line error."""
    column = 0 if naming == "caffe2" else 1
    table = name_table()
    # BatchNorm's batch counters (PyTorch's own; Caffe2 has none): not used in inference.
    state: dict[str, torch.Tensor] = {
        name: torch.zeros((), dtype=torch.long)
        for name in shapes
        if name.endswith(".num_batches_tracked")
    }
    for ours, names in table.items():
        theirs = names[column]
        if theirs not in tensors:
            raise VfeError(f"{source} lacks {theirs} (for {ours}): not a SlowFast R50 8x8 file")
        value = torch.as_tensor(np.asarray(tensors[theirs], dtype=np.float32))
        if value.shape != shapes[ours]:
            raise VfeError(
                f"{source}: {theirs} has shape {tuple(value.shape)}, {ours} needs "
                f"{tuple(shapes[ours])}: not a SlowFast R50 8x8 file"
            )
        state[ours] = value
    used = {names[column] for names in table.values()}
    unused = sorted(
        name for name in tensors if name not in used and not name.endswith("num_batches_tracked")
    )
    if unused:
        raise VfeError(
            f"{source} holds {len(unused)} tensor(s) SlowFast R50 8x8 has no place for (first: "
            f"{unused[0]}): another architecture?"
        )
    return state


def pyslowfast_state(path: Path, state: Any, model: torch.nn.Module) -> Any:
    """`slowfast_r50`'s state from a PySlowFast file: a Caffe2 pickle (`state` None: read
    here), or a PyTorch checkpoint under PySlowFast's names; any other `state` as it is."""
    shapes = {name: tensor.shape for name, tensor in model.state_dict().items()}
    source = f"--model.weights {str(path)!r}"
    if state is None:
        return to_pytorchvideo(read_caffe2_blobs(path), "caffe2", source, shapes)
    inner = state.get("model_state", state) if isinstance(state, dict) else state
    if isinstance(inner, dict) and looks_like_pyslowfast(inner):
        return to_pytorchvideo(inner, "pyslowfast", source, shapes)
    return state
