"""`--data.convert_on model`: workers hand over the decoded YUV pictures; colour conversion and
resizing run on the model's device (here the CPU; on a GPU machine, the GPU test)."""

import json
import subprocess
from pathlib import Path

import av
import av.codec.hwaccel
import numpy as np
import pytest
import torch
from conftest import cosine, reference_decode, run_vfe
from torchvision.transforms import InterpolationMode

from vfe.bench.synthetic import write_video
from vfe.data.datamodule import VideoDataModule
from vfe.data.dataset import VideoClipDataset
from vfe.data.input_spec import FrameSampling, InputSpec
from vfe.data.paths import find_videos
from vfe.data.transforms import model_samples
from vfe.decoding import pyav
from vfe.decoding.colour import yuv_to_rgb
from vfe.decoding.pyav import _packed_from_dlpack, _packed_of, _rgb_of
from vfe.decoding.video import check_decoder, open_video
from vfe.errors import VfeError
from vfe.output.audit import Audit
from vfe.output.report import report_run


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def _testsrc(path: Path, size: str, *options: str, seconds: float = 1.0) -> Path:
    _ffmpeg(
        "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=10", "-t", str(seconds), "-c:v",
        "libx264", *options, str(path),
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def colour_videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """720p H.264 tagged BT.709, BT.601 and untagged; full range (yuvj420p) at an odd size;
    4:4:4 and 10-bit (converted in the workers)."""
    folder = tmp_path_factory.mktemp("colour")
    tagged = ["-pix_fmt", "yuv420p", "-color_primaries"]
    return {
        "bt709": _testsrc(
            folder / "bt709.mp4", "1280x720", *tagged, "bt709", "-color_trc", "bt709",
            "-colorspace", "bt709",
        ),
        "bt601": _testsrc(
            folder / "bt601.mp4", "1280x720", *tagged, "bt470bg", "-color_trc", "gamma28",
            "-colorspace", "bt470bg",
        ),
        "untagged": _testsrc(folder / "untagged.mp4", "1280x720", "-pix_fmt", "yuv420p"),
        "full_range": _testsrc(
            folder / "full_range.mp4", "642x362", "-pix_fmt", "yuvj420p", "-color_range", "pc"
        ),
        "yuv444p": _testsrc(folder / "yuv444p.mp4", "96x64", "-pix_fmt", "yuv444p"),
        "yuv420p10": _testsrc(folder / "yuv420p10.mp4", "96x64", "-pix_fmt", "yuv420p10le"),
    }  # fmt: skip


@pytest.mark.parametrize("name", ["bt709", "bt601", "untagged", "full_range"])
@pytest.mark.parametrize("pixel_format", [None, "nv12"])
def test_conversion_is_swscales_within_two_levels(colour_videos, name, pixel_format):
    """Every frame of each file, as yuv420p and as NV12 (NVDEC's layout), against PyAV's
    `to_ndarray("rgb24")` (FFmpeg's swscale)."""
    with av.open(str(colour_videos[name])) as container:
        for frame in container.decode(video=0):
            reference = _rgb_of(frame).permute(2, 0, 1).int()
            source = frame if pixel_format is None else frame.reformat(format=pixel_format)
            picture = _packed_of(source)
            assert picture is not None
            assert picture.layout.matrix == ("bt709" if name == "bt709" else "bt601")
            assert picture.layout.full_range == (name == "full_range")
            rgb = yuv_to_rgb(picture.tensor()[None], picture.layout)[0].int()
            difference = (rgb - reference).abs()
            assert difference.max() <= 2, name
            assert difference.float().mean() <= 0.45, name


@pytest.mark.parametrize(
    ("height", "width", "packs"), [(64, 96, True), (64, 97, True), (63, 96, False), (63, 97, False)]
)
def test_odd_sizes_convert_as_swscale_or_stay_in_the_workers(height, width, packs):
    """Noise (the hardest case for chroma) at odd sizes: an odd width converts as swscale; an
    odd height, where swscale interpolates the chroma, is left to the workers."""
    rgb = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    picture = _packed_of(frame)
    assert (picture is not None) == packs
    if packs:
        converted = yuv_to_rgb(picture.tensor()[None], picture.layout)[0].int()
        assert (converted - _rgb_of(frame).permute(2, 0, 1).int()).abs().max() <= 2


@pytest.mark.parametrize("name", ["yuv444p", "yuv420p10"])
def test_other_formats_are_left_to_the_workers(colour_videos, name):
    with av.open(str(colour_videos[name])) as container:
        assert _packed_of(next(container.decode(video=0))) is None


def test_rotated_pictures_turn_as_ffmpeg_turns_them(real_world_videos):
    with av.open(str(real_world_videos["rotated_90.mp4"])) as container:
        frame = next(container.decode(video=0))
    picture = _packed_of(frame)
    assert picture.layout.rotation != 0
    rgb = yuv_to_rgb(picture.tensor()[None], picture.layout)[0]
    expected = torch.from_numpy(
        np.ascontiguousarray(reference_decode(real_world_videos["rotated_90.mp4"]).frames[0])
    )
    assert rgb.shape == expected.permute(2, 0, 1).shape
    assert (rgb.int() - expected.permute(2, 0, 1).int()).abs().float().mean() <= 0.6


def _spec(frames_per_clip: int | None, size: int, **options) -> InputSpec:
    return InputSpec(
        frames_per_clip, size, size, InterpolationMode.BICUBIC, True, (0.5,) * 3, (0.5,) * 3, 4,
        **options,
    )  # fmt: skip


SPECS = {
    "frames": _spec(None, 32),
    "stacked": _spec(4, 40, stack_frames=True),
    "middle": _spec(1, 24, frame_sampling=FrameSampling.MIDDLE),
}


def _samples(folder: Path, convert_on: str, clip_len: float) -> dict:
    """Every sample per backbone, by (video, clip): as the model receives them."""
    dataset = VideoClipDataset(
        find_videos(folder), SPECS, clip_len, {"frames": 5, "stacked": 3, "middle": 3},
        convert_on=convert_on,
    )  # fmt: skip
    samples: dict = {name: {} for name in SPECS}
    layouts_seen: dict = {name: set() for name in SPECS}
    for batch in dataset:
        for name, taken in batch["models"].items():
            layouts_seen[name].update(taken.get("layouts", [None]))
            pixels = model_samples(taken["pixels"], taken.get("layouts"), SPECS[name])
            assert len(pixels) == len(taken["clip_index"])
            for video, clip, sample in zip(
                taken["video_index"], taken["clip_index"], pixels, strict=True
            ):
                samples[name].setdefault((video, clip), []).append(sample)
    return samples, layouts_seen


def test_samples_equal_the_workers_within_a_few_levels(colour_videos, tmp_path: Path):
    """Mixed in one run: 720p BT.709, odd-sized full range, 4:4:4 (converted in the workers)
    and a stream whose picture size changes mid-clip (MPEG-TS segments joined), each backbone
    kind: every frame, stacked clips, the middle frame."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("bt709", "full_range", "yuv444p"):
        (folder / f"{name}.mp4").symlink_to(colour_videos[name])
    first = _testsrc(tmp_path / "a.ts", "160x120", "-pix_fmt", "yuv420p", "-f", "mpegts")
    second = _testsrc(
        tmp_path / "b.ts", "96x64", "-pix_fmt", "yuv420p", "-output_ts_offset", "1.5",
        "-f", "mpegts",
    )  # fmt: skip
    (folder / "resized.ts").write_bytes(first.read_bytes() + second.read_bytes())
    on_workers, _ = _samples(folder, "workers", 0.3)
    on_model, layouts = _samples(folder, "model", 0.3)
    for name in SPECS:
        assert on_model[name].keys() == on_workers[name].keys(), name
        assert len(on_model[name]) >= 10
        for key, samples in on_workers[name].items():
            ours, theirs = torch.stack(on_model[name][key]), torch.stack(samples)
            assert ours.shape == theirs.shape, (name, key)
            difference = (ours.int() - theirs.int()).abs()
            assert difference.max() <= 3, (name, key)
            assert difference.float().mean() <= 0.5, (name, key)
        # Batches mixed packed runs of several layouts and samples the workers converted.
        assert None in layouts[name] and len(layouts[name]) >= 3, name


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"convert_on": "gpu"}, "--data.convert_on 'gpu' is not allowed; choose one of workers"),
        (
            {"convert_on": "model", "decoder": "decord"},
            "--data.convert_on model needs the decoded pictures",
        ),
        (
            {"decode_device": "cuda", "num_workers": 0},
            "keeps the pictures on the GPU, where they are converted: add --data.convert_on model",
        ),
    ],
)
def test_bad_convert_on_choices_are_clear_errors(tmp_path: Path, options, message):
    with pytest.raises(VfeError, match=message):
        VideoDataModule(input_dir=tmp_path, **options)


def test_pyav_without_cuda_decoding_says_so(monkeypatch):
    monkeypatch.setattr(av.codec.hwaccel, "hwdevices_available", lambda: ["vaapi"])
    with pytest.raises(VfeError, match="this PyAV's FFmpeg has no CUDA hardware decoding"):
        check_decoder("pyav", "cuda")


def test_nv12_read_through_dlpack_packs_as_from_the_buffers(colour_videos):
    """NVDEC's frames are read through DLPack; NV12 frames on the CPU take the same path."""
    with av.open(str(colour_videos["bt601"])) as container:
        frame = next(container.decode(video=0)).reformat(format="nv12")
    through_dlpack, from_buffers = _packed_from_dlpack(frame), _packed_of(frame)
    assert through_dlpack.layout == from_buffers.layout
    assert torch.equal(through_dlpack.tensor(), from_buffers.tensor())


def test_a_video_nvdec_does_not_decode_is_named_and_recorded(tmp_path: Path, monkeypatch, capsys):
    """Where NVDEC cannot decode a stream FFmpeg decodes it in software: the run says so and
    the segment's record (the file's provenance) holds nvdec_frames 0. Simulated here by
    opening without the hardware context, which is what FFmpeg's fallback amounts to."""
    monkeypatch.setattr(pyav, "_nvdec", lambda device: None)
    monkeypatch.setattr(pyav, "make_torch_context_current", lambda device: None)
    write_video(tmp_path / "in" / "v.mp4", num_frames=10, fps=10)
    dataset = VideoClipDataset(
        find_videos(tmp_path / "in"), {"frames": SPECS["frames"]}, 2.0, {"frames": 4},
        decode_device="cuda", convert_on="model",
    )  # fmt: skip
    ends = [end for batch in dataset for end in batch["ends"]]
    assert [end.nvdec_frames for end in ends] == [0]
    assert "v.mp4: NVDEC cannot decode its stream; FFmpeg's software decoder did" in (
        capsys.readouterr().err
    )


def test_nvdec_runs_in_torch_s_context_not_a_primary_context_of_its_own():
    """PyAV asks FFmpeg for the primary context (primary_ctx=1) when frames stay on the GPU;
    FFmpeg refuses one torch already made active with other flags. vfe asks for the context
    current on the opening thread instead (PyAV 18.1's FFmpeg: current_ctx)."""
    accel = pyav._nvdec("cuda:1")
    assert accel.options == {"primary_ctx": "0", "current_ctx": "1"}
    assert accel.device_id == 1 and accel.is_hw_owned and accel.allow_software_fallback


def test_a_hardware_device_that_cannot_start_is_one_run_error(tmp_path: Path, monkeypatch):
    """Was: the OSError of creating the device was caught as a file error, and every video was
    recorded as failed while the run went on. A device that does not exist stands in for one
    whose context cannot be had; the file opens without it, so the run stops with one line. A
    broken file is still that file's failure."""
    from av.codec.hwaccel import HWAccel

    monkeypatch.setattr(pyav, "make_torch_context_current", lambda device: None)
    monkeypatch.setattr(
        pyav, "_nvdec", lambda device: HWAccel("cuda", device="97", is_hw_owned=True)
    )
    write_video(tmp_path / "in" / "a.mp4", num_frames=10, fps=10)
    write_video(tmp_path / "in" / "b.mp4", num_frames=10, fps=10)
    with pytest.raises(VfeError, match=r"^NVDEC could not be started on cuda \("):
        pyav.PyAVVideo(tmp_path / "in" / "a.mp4", "cuda")
    dataset = VideoClipDataset(
        find_videos(tmp_path / "in"), {"frames": SPECS["frames"]}, 2.0, {"frames": 4},
        decode_device="cuda", convert_on="model",
    )  # fmt: skip
    with pytest.raises(VfeError, match="NVDEC could not be started"):
        list(dataset)
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(av.FFmpegError):
        pyav.PyAVVideo(tmp_path / "broken.mp4", "cuda")


class _NVDECPlane:
    """A stand-in for a plane of an NVDEC frame with PyAV 17-18.1's DLPack signature: it
    says it is on a CUDA device and refuses any stream."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor

    def __dlpack_device__(self) -> tuple[int, int]:
        return (2, 0)  # kDLCUDA, device 0

    def __dlpack__(self, *, stream: int | None = None):
        if stream is not None:
            raise NotImplementedError(
                "CUDA stream synchronization is not supported. Pass stream=None and "
                "synchronize before calling __dlpack__."
            )
        return self.tensor.__dlpack__()


def test_hardware_planes_are_taken_as_capsules(monkeypatch):
    """torch passes its current stream to a CUDA producer given as an object; PyAV refuses
    every stream for hardware frames, so every NVDEC frame raised. The capsule is taken with
    no stream instead."""

    class Stream:
        cuda_stream = 7

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    plane = _NVDECPlane(torch.arange(12, dtype=torch.uint8).reshape(3, 4))
    with pytest.raises(NotImplementedError, match="stream synchronization is not supported"):
        torch.from_dlpack(plane)  # what vfe did
    assert torch.equal(pyav.plane_tensor(plane), plane.tensor)


def test_only_nv12_hardware_pictures_are_packed(colour_videos):
    """NVDEC's 4:4:4 output (yuv444p) cannot be exported by PyAV: such pictures are not
    packed (the RGB path takes them); NV12 ones are."""
    with av.open(str(colour_videos["yuv444p"])) as container:
        frame = next(container.decode(video=0))
    assert frame.format.name == "yuv444p" and _packed_from_dlpack(frame) is None
    assert _packed_from_dlpack(frame.reformat(format="nv12")) is not None


def test_streams_the_gpu_conversion_does_not_take_are_decoded_on_the_cpu(colour_videos):
    """Decided when the file is opened: 4:4:4 (or 10-bit, BT.2020, odd sizes) never goes
    through NVDEC only to be downloaded again."""
    for name, packs in (("bt709", True), ("bt601", True), ("yuv444p", False)):
        with av.open(str(colour_videos[name])) as container:
            assert pyav._packs_on_the_gpu(container.streams.video[0]) is packs, name


def test_gpu_pictures_are_read_once_per_batch_not_per_clip(tmp_path: Path, monkeypatch):
    """A device-wide wait per clip (middle-frame and clip emitters) would make decoding wait
    for the model again and again. Pictures on a device other than the CPU (here PyTorch's
    "meta" device stands in for the GPU) are copied once per batch, after one wait."""
    from vfe.data import batching
    from vfe.decoding.video import PackedPicture

    waits, copies = [], []
    monkeypatch.setattr(batching, "ready_to_read", lambda device: waits.append(len(copies)))
    real_packed_of = pyav._packed_of

    def on_a_device(frame):
        picture = real_packed_of(frame)
        return PackedPicture(
            picture.layout, torch.device("meta"), lambda target: copies.append(target.shape)
        )

    monkeypatch.setattr(pyav, "_packed_of", on_a_device)
    write_video(tmp_path / "in" / "v.mp4", num_frames=60, fps=10)  # 6 s: 3 two-second clips
    specs = {"middle": SPECS["middle"], "stacked": SPECS["stacked"]}
    dataset = VideoClipDataset(
        find_videos(tmp_path / "in"), specs, 2.0, {"middle": 2, "stacked": 2},
        convert_on="model",
    )  # fmt: skip
    batches = list(dataset)
    clips = sum(len(b["models"][n]["clip_index"]) for b in batches for n in b["models"])
    assert clips == 6 and len(copies) == 3 + 3 * 4  # a middle frame and 4 frames per clip
    assert 1 <= len(waits) <= len(batches) < clips  # per batch, never per clip
    assert waits[0] == 0  # each wait comes before the copies it guards


@pytest.fixture(scope="module")
def nvdec_videos(tmp_path_factory: pytest.TempPathFactory, request) -> dict[str, Path]:
    """H.264 written by PyAV (the GPU machine has no `ffmpeg` command line) at 720p and 1080p
    (coded as 1088 rows: NVDEC's output is cropped), above NVDEC's 144x144 minimum; and the
    real-world corpus where the command line exists."""
    folder = tmp_path_factory.mktemp("nvdec")
    videos = {
        "720p.mp4": write_video(folder / "720p.mp4", 30, 25, 720, 1280, seed=3),
        "1080p.mp4": write_video(folder / "1080p.mp4", 20, 25, 1080, 1920, seed=4),
    }
    if subprocess.run(["which", "ffmpeg"], capture_output=True).returncode == 0:
        videos |= request.getfixturevalue("real_world_videos")
    return videos


def _torch_context_first() -> None:
    """As in a run: the model is on the GPU (torch's CUDA context exists) before any open."""
    torch.zeros(1, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_nvdec_gives_the_cpu_decodes_frames_times_and_pictures(nvdec_videos):
    """Same demuxer, timestamps and reordering. H.264 and HEVC decoders are bit-exact, so
    NVDEC's pictures of those equal the CPU's byte for byte (and Hopper's NVDEC decodes every
    8-bit one); other codecs (MPEG-2's IDCT is not bit-exact) within a level on average. The
    PyAV-written files must be decoded by NVDEC itself: a silent software decode fails."""
    _torch_context_first()
    for name, path in nvdec_videos.items():
        with av.open(str(path)) as container:
            context = container.streams.video[0].codec_context
            exact = context.name in ("h264", "hevc") and context.pix_fmt == "yuv420p"
        on_gpu = open_video(path, "pyav", "cuda")
        on_cpu = open_video(path, "pyav", "cpu")
        gpu_frames, cpu_frames = list(on_gpu.frames()), list(on_cpu.frames())
        assert [f.time_seconds for f in gpu_frames] == [f.time_seconds for f in cpu_frames]
        for gpu_frame, cpu_frame in zip(gpu_frames, cpu_frames, strict=True):
            gpu_picture, cpu_picture = gpu_frame.packed(), cpu_frame.packed()
            if gpu_picture is None or cpu_picture is None:
                continue
            assert gpu_picture.layout == cpu_picture.layout, name
            gpu_pixels, cpu_pixels = gpu_picture.tensor().cpu(), cpu_picture.tensor()
            if exact:
                assert torch.equal(gpu_pixels, cpu_pixels), name
            else:
                assert (gpu_pixels.int() - cpu_pixels.int()).abs().float().mean() <= 1, name
        if exact:
            assert on_gpu.hardware_frames == len(gpu_frames), name
        if name in ("720p.mp4", "1080p.mp4"):
            assert on_gpu.hardware_frames == len(gpu_frames) > 0, name
            assert gpu_frames[0].packed().device.type == "cuda", name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_nvdec_run_equals_the_runs_decoding_on_the_cpu(
    nvdec_videos: dict[str, Path], tiny_clip_file: Path, tmp_path: Path
):
    """Through the CLI on the GPU: decoding with NVDEC gives the features and timestamps of
    decoding on the CPU (both converting on the GPU), and each file records how it was decoded:
    the PyAV-written H.264 files every frame by NVDEC. Needs no `ffmpeg` command line."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name, path in nvdec_videos.items():
        (folder / name).symlink_to(path)
    write_video(folder / "hd.mp4", num_frames=40, fps=25, height=720, width=1280)
    common = [
        "--model", "clip", "--model.arch", "custom", "--model.weights", str(tiny_clip_file),
        "--input_dir", str(folder), "--device", "cuda", "--data.convert_on", "model",
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    # Processes of their own: DataLoader workers forked from a process that has used CUDA.
    on_cpu = run_vfe(*common, "--output_dir", "cpu", cwd=tmp_path, process=True)
    assert on_cpu.returncode == 0, on_cpu.stderr
    on_gpu = run_vfe(
        *common, "--output_dir", "gpu", "--data.decode_device", "cuda",
        "--data.num_workers", "0", cwd=tmp_path, process=True,
    )  # fmt: skip
    assert on_gpu.returncode == 0, on_gpu.stderr
    for path in sorted(folder.iterdir()):
        name = path.with_suffix(".npz").name
        cpu, gpu = np.load(tmp_path / "cpu" / name), np.load(tmp_path / "gpu" / name)
        np.testing.assert_array_equal(gpu["timestamps"], cpu["timestamps"], err_msg=name)
        assert cosine(gpu["features"], cpu["features"]).min() >= 0.9999, name
        assert '"nvdec_frames": ' in str(gpu["provenance"]), name
        assert "nvdec_frames" not in str(cpu["provenance"]), name
    for name, frames in (("hd", 40), ("720p", 30), ("1080p", 20)):
        provenance = json.loads(str(np.load(tmp_path / "gpu" / f"{name}.npz")["provenance"]))
        assert provenance["video"]["nvdec_frames"] == frames, name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_conversion_on_the_gpu_equals_the_cpus(tmp_path: Path):
    spec = _spec(None, 224)
    video = write_video(tmp_path / "v.mp4", num_frames=8, fps=10, height=720, width=1280)
    with av.open(str(video)) as container:
        pictures = [_packed_of(frame) for frame in container.decode(video=0)]
    pixels = torch.stack([picture.tensor() for picture in pictures])
    layouts = [pictures[0].layout]
    on_cpu = model_samples([pixels], layouts, spec)
    with torch.autocast("cuda", dtype=torch.bfloat16):  # as under --trainer.precision bf16-mixed
        on_gpu = model_samples([pixels.cuda()], layouts, spec).cpu()
    assert (on_gpu.int() - on_cpu.int()).abs().max() <= 1


def test_the_summary_counts_the_videos_nvdec_left_to_software(tmp_path: Path, capsys):
    totals = {"failed": 0, "concealed": 0, "not_nvdec": 2}
    totals |= {"clip/written": 5, "clip/clips": 20, "clip/unfinished": 0}
    report_run(totals, {"clip": tmp_path}, {}, "run", 1.0, Audit())
    err = capsys.readouterr().err
    assert "written 5, skipped 0, failed 0" in err
    assert "2 video(s) decoded by FFmpeg in software: NVDEC cannot decode their streams" in err
