"""PySlowFast's files as the tests write them: Caffe2 blob names and PySlowFast module names of
`slowfast_r50`'s tensors (rules written from PySlowFast's naming, not from vfe's table), a
Python 2 pickle of Caffe2 blobs, and seeded random weights whose rows differ."""

import re
import struct

import numpy as np
import torch


def caffe2_name(ours: str) -> str:
    """The Caffe2 blob of a `slowfast_r50` tensor, from the module names (the tests' own rules,
    written from PySlowFast's Caffe2 naming: `t_` for the fast pathway, `resS_B_branch2a`,
    BatchNorm `_s/_b/_rm/_riv`, fusions `t_pool1_subsample` and `..._branch2c_bn_subsample`)."""
    suffix = {"weight": "w", "bias": "b", "running_mean": "rm", "running_var": "riv"}
    module, key = ours.rsplit(".", 1)
    if module == "blocks.6.proj":
        return f"pred_{suffix[key]}"
    norm = lambda stem: f"{stem}_bn_{'s' if key == 'weight' else suffix[key]}"  # noqa: E731
    if match := re.fullmatch(r"blocks\.0\.multipathway_blocks\.(\d)\.(conv|norm)", module):
        fast = "t_" if match[1] == "1" else ""
        return f"{fast}conv1_w" if match[2] == "conv" else norm(f"{fast}res_conv1")
    if match := re.fullmatch(
        r"blocks\.(\d)\.multipathway_fusion\.(conv_fast_to_slow|norm)", module
    ):
        stage = int(match[1])
        stem = "t_pool1_subsample" if stage == 0 else None
        if stem is None:
            last = (3, 4, 6)[stage - 1] - 1
            stem = f"t_res{stage + 1}_{last}_branch2c_bn_subsample"
        return f"{stem}_w" if match[2] == "conv_fast_to_slow" else norm(stem)
    match = re.fullmatch(r"blocks\.(\d)\.multipathway_blocks\.(\d)\.res_blocks\.(\d)\.(.+)", module)
    stage, fast, block, part = int(match[1]) + 1, match[2] == "1", match[3], match[4]
    stem = f"{'t_' if fast else ''}res{stage}_{block}"
    if part in ("branch1_conv", "branch1_norm"):
        return f"{stem}_branch1_w" if part == "branch1_conv" else norm(f"{stem}_branch1")
    kind, letter = re.fullmatch(r"branch2\.(conv|norm)_([abc])", part).groups()
    return f"{stem}_branch2{letter}_w" if kind == "conv" else norm(f"{stem}_branch2{letter}")


def pyslowfast_name(caffe2: str) -> str:
    """PySlowFast's module name for a Caffe2 blob (its loader's renaming, written here from the
    names: `s1.pathwayP_stem`, `sS.pathwayP_resB.branch2.a`, `sS_fuse.conv_f2s`, ...)."""
    fast, rest = (1, caffe2[2:]) if caffe2.startswith("t_") else (0, caffe2)
    tail = {"w": "weight", "b": "bias", "s": "weight", "rm": "running_mean", "riv": "running_var"}
    if rest.startswith("pred_"):
        return f"head.projection.{tail[rest[5:]]}"
    if match := re.fullmatch(r"pool1_subsample(_bn)?_(\w+)", rest):
        return f"s1_fuse.{'bn' if match[1] else 'conv_f2s'}.{tail[match[2]]}"
    if match := re.fullmatch(r"res(\d)_\d+_branch2c_bn_subsample(_bn)?_(\w+)", rest):
        return f"s{match[1]}_fuse.{'bn' if match[2] else 'conv_f2s'}.{tail[match[3]]}"
    if match := re.fullmatch(r"(?:res_)?conv1(_bn)?_(\w+)", rest):
        return f"s1.pathway{fast}_stem.{'bn' if match[1] else 'conv'}.{tail[match[2]]}"
    match = re.fullmatch(r"res(\d)_(\d+)_branch(1|2[abc])(_bn)?_(\w+)", rest)
    stage, block, branch, bn, key = match.groups()
    branch = "branch1" if branch == "1" else f"branch2.{branch[1]}"
    return f"s{stage}.pathway{fast}_res{block}.{branch}{'_bn' if bn else ''}.{tail[key]}"


def python2_pickle(blobs: dict[str, np.ndarray], extra_global: str | None = None) -> bytes:
    """`{"blobs": {name: float32 array}}` as Python 2 and its numpy pickle it (protocol 2):
    byte strings (BINSTRING), `numpy.core.multiarray._reconstruct` with the raw data as a
    byte string, dtypes rebuilt with `numpy.dtype`. `extra_global`: a value naming that global
    (a file that must be refused)."""
    out = bytearray(b"\x80\x02")

    def string(text: bytes) -> None:
        if len(text) < 256:
            out.extend(b"U" + bytes([len(text)]) + text)
        else:
            out.extend(b"T" + struct.pack("<I", len(text)) + text)

    def name(module: str, attribute: str) -> None:
        out.extend(b"c" + module.encode() + b"\n" + attribute.encode() + b"\n")

    def array(values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype="<f4")
        name("numpy.core.multiarray", "_reconstruct")
        name("numpy", "ndarray")
        out.extend(b"K\x00\x85")  # (0,)
        string(b"b")
        out.extend(b"\x87R(K\x01(")  # reduce; state: (1, shape, dtype, False, raw)
        for size in values.shape:
            out.extend(b"J" + struct.pack("<i", size))
        out.extend(b"t")
        name("numpy", "dtype")
        string(b"f4")
        out.extend(b"K\x00K\x01\x87R(K\x03")
        string(b"<")
        out.extend(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89")
        string(values.tobytes())
        out.extend(b"tb")

    out.extend(b"}")
    string(b"blobs")
    out.extend(b"}(")
    for blob, values in blobs.items():
        string(blob.encode())
        array(values)
    if extra_global:
        string(b"evil")
        name(*extra_global.rsplit(".", 1))
    out.extend(b"us.")
    return bytes(out)


def random_slowfast_state() -> dict[str, torch.Tensor]:
    """Seeded random `slowfast_r50` tensors, conv filters centred (rows that differ), BatchNorm
    statistics random too (a swapped mean and variance must show)."""
    from pytorchvideo.models.hub import slowfast_r50

    torch.manual_seed(7)
    state = slowfast_r50(pretrained=False).state_dict()
    generator = torch.Generator().manual_seed(8)
    for key, tensor in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        values = torch.randn(tensor.shape, generator=generator)
        if tensor.dim() >= 2:  # conv and linear weights: He scale, conv filters centred
            values /= tensor[0].numel() ** 0.5
            if tensor.dim() == 5:
                values -= values.mean(dim=(1, 2, 3, 4), keepdim=True)
        elif key.endswith("running_var"):
            values = 0.1 * values.abs() + 0.9
        elif key.endswith("norm.weight") or ("norm_" in key and key.endswith("weight")):
            values = 1 + 0.1 * values
        else:
            values = 0.1 * values
        state[key] = values
    return state


def caffe2_blobs(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """`slowfast_r50` tensors as the Caffe2 blobs of `SLOWFAST_8x8_R50.pkl`."""
    return {
        caffe2_name(key): tensor.numpy()
        for key, tensor in state.items()
        if not key.endswith("num_batches_tracked")
    }
