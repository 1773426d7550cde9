"""PySlowFast's SlowFast R50 8x8 weights (the Caffe2 `SLOWFAST_8x8_R50.pkl` HERO's extractor
loads, and PySlowFast-named checkpoints) in PyTorchVideo's `slowfast_r50`, exactly; Caffe2
pickles read without running anything they name."""

import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from vfe.backbones.pyslowfast_weights import name_table
from vfe.backbones.slowfast import load_slowfast
from vfe.errors import VfeError


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


@pytest.fixture(scope="module")
def random_slowfast() -> dict[str, torch.Tensor]:
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


def test_the_name_table_equals_the_names_written_from_the_architecture(random_slowfast):
    table = name_table()
    ours = {key for key in random_slowfast if not key.endswith("num_batches_tracked")}
    assert set(table) == ours and len(table) == 552  # every tensor, as many as the file's blobs
    for key, (caffe2, pyslowfast) in table.items():
        assert caffe2 == caffe2_name(key), key
        assert pyslowfast == pyslowfast_name(caffe2), key
    assert len({caffe2 for caffe2, _ in table.values()}) == 552  # one blob each


def test_a_caffe2_pickle_loads_exactly(random_slowfast, tmp_path: Path):
    blobs = {
        caffe2_name(key): tensor.numpy()
        for key, tensor in random_slowfast.items()
        if not key.endswith("num_batches_tracked")
    }
    path = tmp_path / "SLOWFAST_8x8_R50.pkl"
    path.write_bytes(python2_pickle(blobs))
    model = load_slowfast(str(path))
    loaded = model.state_dict()
    for key, tensor in random_slowfast.items():
        if key.startswith("blocks.6.proj") or key.endswith("num_batches_tracked"):
            continue  # the classifier is removed
        assert torch.equal(loaded[key], tensor), key
    from pytorchvideo.models.hub import slowfast_r50

    reference = slowfast_r50(pretrained=False)
    reference.load_state_dict(random_slowfast)
    reference.blocks[-1].proj = torch.nn.Identity()
    reference.blocks[-1].activation = None
    with torch.no_grad():
        clips = torch.randn(1, 3, 32, 224, 224)
        features = model([clips[:, :, ::4], clips])
        expected = reference.eval()([clips[:, :, ::4], clips])
    assert features.shape == (1, 2304) and torch.equal(features, expected)


def test_a_pyslowfast_checkpoint_loads_exactly(random_slowfast, tmp_path: Path):
    model_state = {
        pyslowfast_name(caffe2_name(key)): tensor
        for key, tensor in random_slowfast.items()
        if not key.endswith("num_batches_tracked")
    }
    path = tmp_path / "SLOWFAST_8x8_R50_pyslowfast.pyth"
    torch.save({"model_state": model_state, "epoch": 196}, path)
    loaded = load_slowfast(str(path)).state_dict()
    for key in ("blocks.0.multipathway_fusion.norm.running_var", "blocks.4.multipathway_blocks."
                "1.res_blocks.2.branch2.conv_c.weight"):  # fmt: skip
        assert torch.equal(loaded[key], random_slowfast[key]), key


def test_a_pickle_naming_another_global_is_refused_before_it_runs(random_slowfast, tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(python2_pickle({}, extra_global="os.system"))
    with pytest.raises(VfeError, match=r"names os\.system, which a Caffe2 checkpoint") as raised:
        load_slowfast(str(path))
    assert "\n" not in str(raised.value) and str(path) in str(raised.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("drop", "lacks res3_1_branch2b_w (for blocks.2.multipathway_blocks.0.res_blocks.1."),
        ("reshape", "t_conv1_w has shape (8, 3, 1, 7, 7), blocks.0.multipathway_blocks.1.conv"),
        ("extra", "1 tensor(s) SlowFast R50 8x8 has no place for (first: nonlocal_conv3_1_w)"),
    ],
)
def test_a_file_that_does_not_fit_names_the_first_mismatch(
    change, message, random_slowfast, tmp_path: Path
):
    blobs = {
        caffe2_name(key): tensor.numpy()
        for key, tensor in random_slowfast.items()
        if not key.endswith("num_batches_tracked")
    }
    if change == "drop":
        del blobs["res3_1_branch2b_w"]
    elif change == "reshape":
        blobs["t_conv1_w"] = blobs["t_conv1_w"][:, :, :1]
    else:
        blobs["nonlocal_conv3_1_w"] = np.zeros(1, np.float32)
    path = tmp_path / "other.pkl"
    path.write_bytes(python2_pickle(blobs))
    with pytest.raises(VfeError, match=re.escape(message)):
        load_slowfast(str(path))
