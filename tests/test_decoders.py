"""Both decoders see the same frames and times; torchcodec gives the same features as decord."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import extract

from vfe.backbones.openai_clip import CLIPBackbone
from vfe.errors import VfeError
from vfe.synthetic import write_video
from vfe.video import check_decoder, open_video


def torchcodec_available() -> bool:
    try:
        check_decoder("torchcodec")
    except VfeError:
        return False
    return True


needs_torchcodec = pytest.mark.skipif(
    not torchcodec_available(), reason="torchcodec or a system FFmpeg is missing"
)


@needs_torchcodec
def test_torchcodec_and_decord_decode_the_same_frames_and_times(tmp_path: Path):
    # Variable frame rate: 20 frames 1/30 s apart, then 20 frames 3/30 s apart.
    vfr = write_video(tmp_path / "vfr.mp4", 40, fps=30, frame_durations=[1] * 20 + [3] * 20)
    cfr = write_video(tmp_path / "cfr.mp4", 85, fps=25)
    for path in (cfr, vfr):
        decord_video, torchcodec_video = open_video(path, "decord"), open_video(path, "torchcodec")
        assert decord_video.num_frames == torchcodec_video.num_frames
        indices = [0, 0, 5, 19, 20, decord_video.num_frames - 1]
        a, b = decord_video.get_frames(indices), torchcodec_video.get_frames(indices)
        assert torch.equal(a.frames, b.frames)
        np.testing.assert_allclose(a.start_seconds, b.start_seconds, atol=1e-6)
        np.testing.assert_allclose(a.end_seconds, b.end_seconds, atol=1e-6)
    times = open_video(vfr, "torchcodec").get_frames([19, 20, 39])
    np.testing.assert_allclose(times.start_seconds, [19 / 30, 20 / 30, 77 / 30], atol=1e-5)


@needs_torchcodec
def test_torchcodec_pipeline_matches_decord(video_dir: Path, tiny_clip_file: Path, tmp_path: Path):
    for decoder in ("decord", "torchcodec"):
        model = CLIPBackbone(arch="custom", weights=str(tiny_clip_file))
        extract(model, video_dir, tmp_path / decoder, decoder=decoder, num_workers=1)
    for name in ("moving.npz", "nested/short.npz"):
        a, b = np.load(tmp_path / "decord" / name), np.load(tmp_path / "torchcodec" / name)
        np.testing.assert_array_equal(a["features"], b["features"])
        np.testing.assert_array_equal(a["timestamps"], b["timestamps"])


@pytest.mark.parametrize(
    ("decoder", "device", "message"),
    [
        ("ffmpeg-cli", "cpu", "--data.decoder 'ffmpeg-cli' is unknown"),
        ("decord", "cuda", "needs --data.decoder torchcodec"),
        ("decord", "tpu", "--data.decode_device 'tpu' is unknown"),
    ],
)
def test_bad_decoder_choices_are_clear_errors(decoder, device, message):
    with pytest.raises(VfeError, match=message):
        check_decoder(decoder, device)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@needs_torchcodec
def test_gpu_decoding_matches_cpu_decoding(tiny_clip_file: Path, tmp_path: Path):
    from lightning.pytorch import Trainer

    from vfe.data import VideoDataModule
    from vfe.writer import FeatureWriter

    write_video(tmp_path / "in" / "v.mp4", 60, fps=30, height=240, width=320)
    for decode_device in ("cpu", "cuda"):
        output = tmp_path / decode_device
        trainer = Trainer(
            accelerator="cuda", devices=1, logger=False, enable_progress_bar=False,
            callbacks=[FeatureWriter(output_dir=output)],
        )  # fmt: skip
        datamodule = VideoDataModule(
            input_dir=tmp_path / "in", output_dir=output, decoder="torchcodec",
            decode_device=decode_device, num_workers=0,
        )  # fmt: skip
        model = CLIPBackbone(arch="custom", weights=str(tiny_clip_file))
        trainer.predict(model, datamodule=datamodule, return_predictions=False)
    cpu, gpu = np.load(tmp_path / "cpu" / "v.npz"), np.load(tmp_path / "cuda" / "v.npz")
    cosine = (cpu["features"] * gpu["features"]).sum(1) / (
        np.linalg.norm(cpu["features"], axis=1) * np.linalg.norm(gpu["features"], axis=1)
    )
    assert cosine.min() >= 0.99  # NVDEC's colour conversion differs slightly from FFmpeg's
