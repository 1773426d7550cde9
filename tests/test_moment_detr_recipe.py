"""configs/moment_detr.yaml reproduces the released QVHighlights recipe: CLIP rows are the
frames `ffmpeg -vf fps=1/2` outputs through CLIP's own preprocess and encoder, and both
backbones have FFmpeg's number of rows."""

from fractions import Fraction
from pathlib import Path

import clip
import numpy as np
import torch
from conftest import cosine, run_vfe
from PIL import Image
from test_grid_options import ffmpeg_fps_filter_frames

from vfe.bench.synthetic import write_video

REPO = Path(__file__).resolve().parent.parent


def test_moment_detr_config_matches_ffmpeg_fps_filter_and_rows(
    tmp_path: Path, tiny_clip_file: Path, slowfast_pyth_file: Path
):
    videos = tmp_path / "videos"
    lengths = {"nine.mp4": 270, "ten_and_a_half.mp4": 315}  # frames at 30 fps: 9 s, 10.5 s
    for name, frames in lengths.items():
        write_video(videos / name, frames, fps=30, height=48, width=64, seed=frames)
    out = tmp_path / "features"
    result = run_vfe(
        "--config", str(REPO / "configs" / "moment_detr.yaml"),
        "--input_dir", str(videos), "--output_dir", str(out),
        "--model.clip.weights", str(tiny_clip_file), "--model.clip.arch", "custom",
        "--model.slowfast.weights", str(slowfast_pyth_file),
        "--model.slowfast.batch_size", "5", "--data.num_workers", "0", "--device", "cpu",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    model, preprocess = clip.load(str(tiny_clip_file), device="cpu", jit=False)
    for name in lengths:
        npz = Path(name).with_suffix(".npz")
        with np.load(out / "clip" / npz) as clip_file, np.load(out / "slowfast" / npz) as sf:
            clip_features, slowfast_features = clip_file["features"], sf["features"]
            timestamps = clip_file["timestamps"]
            assert sf["timestamps"].tolist() == timestamps.tolist()
        frames = ffmpeg_fps_filter_frames(videos / name, Fraction(2), 48, 64)
        assert len(frames) == 5  # FFmpeg's rows for 9 s and for 10.5 s
        assert len(clip_features) == len(slowfast_features) == 5, name
        assert timestamps[-1].tolist() == [8.0, 9.0] if name == "nine.mp4" else [8.0, 10.0]
        with torch.no_grad():
            inputs = torch.stack([preprocess(Image.fromarray(frame)) for frame in frames])
            expected = model.encode_image(inputs).float().numpy()
        assert cosine(clip_features, expected).min() >= 0.999, name
