"""PySlowFast's SlowFast R50 8x8 weights (the Caffe2 `SLOWFAST_8x8_R50.pkl` HERO's extractor
loads, and PySlowFast-named checkpoints) in PyTorchVideo's `slowfast_r50`, exactly; Caffe2
pickles read without running anything they name."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from pyslowfast_files import caffe2_name, pyslowfast_name, python2_pickle, random_slowfast_state

from vfe.backbones.pyslowfast_weights import name_table
from vfe.backbones.slowfast import load_slowfast
from vfe.errors import VfeError


@pytest.fixture(scope="module")
def random_slowfast() -> dict[str, torch.Tensor]:
    return random_slowfast_state()


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
