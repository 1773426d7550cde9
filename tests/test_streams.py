"""`--data.decode_streams N`: work items decoded at once in threads of the main process (how
several NVDEC streams run; tested here on the CPU decoder, whose results must not change)."""

import itertools
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import extract

from vfe.backbones.openai_clip import CLIPBackbone
from vfe.bench.synthetic import write_video
from vfe.data.datamodule import VideoDataModule
from vfe.data.streams import in_threads
from vfe.errors import VfeError


def test_every_item_comes_once_in_each_streams_order():
    streams = [iter(range(start, start + 50)) for start in (0, 1000, 2000)]
    values = list(in_threads(streams))
    assert sorted(values) == [*range(50), *range(1000, 1050), *range(2000, 2050)]
    for start in (0, 1000, 2000):
        assert [v for v in values if start <= v < start + 50] == list(range(start, start + 50))


def test_an_error_in_a_stream_is_raised_and_stops_the_others():
    def failing():
        yield 1
        raise ValueError("broken stream")

    with pytest.raises(ValueError, match="broken stream"):
        list(in_threads([failing(), itertools.count()]))
    assert not [t for t in threading.enumerate() if t.name.startswith("vfe-stream")]


def test_closing_early_stops_every_stream():
    values = in_threads([itertools.count(), itertools.count()])
    assert next(values) is not None
    values.close()  # the consumer leaves: the streams must not wait forever
    assert not [t for t in threading.enumerate() if t.name.startswith("vfe-stream")]


def test_three_streams_give_the_features_of_one(tiny_clip_file: Path, tmp_path: Path):
    """A long video split into segments over the streams and short ones beside it: the same
    features as one stream, and the long video really decoded in parts."""
    videos = tmp_path / "in"
    write_video(videos / "long.mp4", num_frames=240, fps=10, seed=1)
    for index in range(3):
        write_video(videos / f"short{index}.mp4", num_frames=15 + 5 * index, fps=10, seed=index)
    model = CLIPBackbone(arch="custom", weights=str(tiny_clip_file))
    extract(model, videos, tmp_path / "one", batch_size=8)
    extract(
        model, videos, tmp_path / "three", batch_size=8, decode_streams=3,
        min_segment_seconds=4.0,
    )  # fmt: skip
    for name in ("long", "short0", "short1", "short2"):
        one, three = (
            np.load(tmp_path / "one" / f"{name}.npz"),
            np.load(tmp_path / "three" / f"{name}.npz"),
        )
        np.testing.assert_allclose(three["features"], one["features"], atol=1e-5, err_msg=name)
        np.testing.assert_array_equal(three["timestamps"], one["timestamps"], err_msg=name)
    long_video = json.loads(str(np.load(tmp_path / "three" / "long.npz")["provenance"]))["video"]
    assert long_video["segments"] >= 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"decode_streams": 0}, "--data.decode_streams must be at least 1, got 0"),
        ({"decode_streams": 2, "num_workers": 2}, "decodes in threads of the main process"),
    ],
)
def test_bad_stream_counts_are_clear_errors(tmp_path: Path, options, message):
    with pytest.raises(VfeError, match=message):
        VideoDataModule(input_dir=tmp_path, **options)


def test_streams_with_nothing_to_do_end_with_the_others(tmp_path: Path):
    """One tiny video over four streams: three get no work; the batches are one stream's."""
    from torchvision.transforms import InterpolationMode

    from vfe.data.dataset import VideoClipDataset
    from vfe.data.input_spec import InputSpec
    from vfe.data.paths import find_videos

    write_video(tmp_path / "in" / "tiny.mp4", num_frames=7, fps=10)
    spec = InputSpec(None, 8, 8, InterpolationMode.BILINEAR, False, (0.5,) * 3, (0.5,) * 3, 4)

    def samples(streams: int) -> list[tuple[int, list[int], list[int]]]:
        dataset = VideoClipDataset(
            find_videos(tmp_path / "in"), {"m": spec}, 0.5, {"m": 4}, decode_streams=streams
        )
        return [
            (len(batch["ends"]), batch["models"]["m"]["clip_index"],
             batch["models"]["m"]["pixels"].flatten().tolist())
            for batch in dataset
            if batch["models"]
        ]  # fmt: skip

    one, four = samples(1), samples(4)
    assert one == four and sum(len(clips) for _, clips, _ in one) == 7
