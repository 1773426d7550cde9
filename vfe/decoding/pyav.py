"""The default decoder: PyAV (its own bundled FFmpeg), one sequential pass per video.

Frames come out exactly as the FFmpeg command line presents them: edit lists honoured, display
rotation applied, exact rational timestamps, colour converted by FFmpeg's swscale to RGB24.
Errors the decoder concealed (damaged data it painted over) are counted by the frames FFmpeg
flags corrupt (its decode error flags), which needs no log callback into Python.

On `cuda`, PyAV's FFmpeg decodes with NVDEC (its hwaccel, loading the driver's libraries at run
time): the same demuxer, timestamps and reordering as on the CPU, the pictures staying on the
GPU (NV12, read through DLPack). A stream NVDEC cannot decode (AV1 on Hopper, 10-bit or 4:4:4
H.264, MPEG-4 Part 2 on some GPUs) is decoded by FFmpeg's software decoder instead, and the video
records which did (`hardware_frames`). So is a stream whose pictures the GPU conversion does not
take (10-bit, 4:4:4, BT.2020, odd sizes): decided when the file is opened, so such pictures are
decoded and converted by FFmpeg on the CPU, never decoded on the GPU and downloaded again.
"""

import functools
import heapq
from collections import deque
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from vfe.decoding.colour import layout_of, pack_planes
from vfe.decoding.source import av_input
from vfe.decoding.sparse import SparsePictures, index_packets, sparse_frames, why_not_sparse
from vfe.decoding.video import (
    DecodeError,
    Frame,
    PackedPicture,
    StreamFacts,
    Timeline,
    check_complete,
)
from vfe.errors import VfeError

# Frames leave the decoder in presentation order, but some containers (AVI with packed B-frames)
# attach timestamps in decode order. Each frame takes the smallest timestamp among the next
# REORDER_FRAMES ones, which undoes that and leaves increasing timestamps untouched; 16 is
# H.264's and HEVC's deepest reordering.
REORDER_FRAMES = 16
_CPU = torch.device("cpu")
# Containers whose seeks were checked to land on the sequential decode's timeline (every cut of
# the real-world corpus, open GOP included). FFmpeg's MPEG program stream demuxer (.mpg, .vob)
# is not among them: after a seek its timestamps are half a frame off the sequential ones, so
# such files (and any other format) are decoded from their start, never split.
SEEKABLE_FORMATS = frozenset(
    {"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "mpegts", "avi", "flv", "asf"}
)


def _rgb_of(frame: av.VideoFrame) -> torch.Tensor:
    """`(H, W, 3) uint8` in display orientation (as `ffmpeg` autorotates)."""
    array = frame.to_ndarray(format="rgb24")
    if frame.rotation % 360:
        array = np.ascontiguousarray(np.rot90(array, k=frame.rotation // 90))
    return torch.from_numpy(array)


def _packed_of(frame: av.VideoFrame) -> PackedPicture | None:
    """The picture's planes packed for conversion on the model's device, or None where
    `vfe.decoding.colour` does not convert its format."""
    layout = layout_of(
        frame.height,
        frame.width,
        frame.format.name,
        frame.colorspace,
        frame.color_range,
        frame.rotation,
    )
    if layout is None:
        return None
    planes = [
        np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
        for plane in frame.planes
    ]
    return PackedPicture(layout, _CPU, lambda packed: pack_planes(planes, layout, packed))


def plane_tensor(plane: "av.video.plane.VideoPlane") -> torch.Tensor:
    """A plane of a hardware frame viewed as a tensor on its GPU, through DLPack.

    The capsule is taken from `__dlpack__()` with no stream: given the plane itself,
    `torch.from_dlpack` passes its current stream for a CUDA producer, which PyAV (17-18.1)
    refuses for hardware frames (NotImplementedError on every NVDEC frame). Ordering is ours:
    NVDEC writes on FFmpeg's own stream, so the reader waits for the device
    (`vfe.decoding.video.ready_to_read`) before reading the view.
    """
    return torch.from_dlpack(plane.__dlpack__())


def _packed_from_dlpack(frame: av.VideoFrame) -> PackedPicture | None:
    """An NVDEC picture on the GPU (or any NV12 frame) to be packed on its device without
    leaving it, or None where it is
    not NV12 (PyAV exports only NV12 and P010/P016; NVDEC's 4:4:4 output is not) or
    `vfe.decoding.colour` does not convert it (10-bit, odd sizes, other matrices). The planes
    are only viewed here; `write` reads them, after the reader's `ready_to_read`."""
    software = frame.sw_format or frame.format  # a hardware frame's pixels; a CPU frame's own
    if software.name != "nv12":
        return None
    layout = layout_of(
        frame.height, frame.width, "nv12", frame.colorspace, frame.color_range, frame.rotation
    )
    if layout is None or frame.width % 2:
        return None
    luma = plane_tensor(frame.planes[0])  # (H, W), rows `line_size` apart
    chroma = plane_tensor(frame.planes[1])  # (H/2, W/2, 2)
    height = frame.height

    def write(packed: torch.Tensor) -> None:
        packed[:height] = luma
        packed[height:] = chroma.flatten(1)

    return PackedPicture(layout, luma.device, write)


# FFmpeg's CUDA device options: use the context current on the opening thread (torch's), not
# the primary context with FFmpeg's own flags. PyAV asks for `primary_ctx=1` when frames stay on
# the GPU, and FFmpeg refuses a primary context that torch already made active with other flags
# ("Primary context already active with incompatible flags"): by the first open the model is on
# the GPU. `current_ctx` came with PyAV 18.1's FFmpeg.
NVDEC_OPTIONS = {"primary_ctx": "0", "current_ctx": "1"}


def _nvdec(device: str) -> "av.codec.hwaccel.HWAccel":
    """PyAV's CUDA hwaccel on `cuda[:N]`: frames stay on the GPU (`is_hw_owned`), FFmpeg in
    torch's context; streams NVDEC cannot decode go to the software decoder."""
    from av.codec.hwaccel import HWAccel

    index = device.partition(":")[2] or "0"
    return HWAccel(
        "cuda",
        device=index,
        allow_software_fallback=True,
        is_hw_owned=True,
        options=dict(NVDEC_OPTIONS),
    )


def make_torch_context_current(device: str) -> None:
    """Bind torch's CUDA context to this thread for FFmpeg's `current_ctx`: a decode-stream
    thread has none until it makes a CUDA call (`set_device` alone binds nothing)."""
    torch.cuda.set_device(torch.device(device))
    torch.cuda.current_stream(device).query()


def _packs_on_the_gpu(stream: "av.video.stream.VideoStream") -> bool:
    """Whether the stream's pictures, decoded by NVDEC, are ones the GPU conversion takes
    (8-bit 4:2:0, BT.601/709, even sizes), from what the container declares."""
    context = stream.codec_context
    if context.pix_fmt not in ("yuv420p", "yuvj420p", "nv12") or context.width % 2:
        return False
    layout = layout_of(
        context.height, context.width, "nv12", context.colorspace, context.color_range, 0
    )
    return layout is not None


def _open_on(path: Path, device: str) -> tuple["av.container.InputContainer", bool]:
    """The file opened for decoding on `device`, and whether NVDEC decodes it. On `cuda`, a
    stream whose pictures the GPU conversion does not take is opened for the CPU instead. A
    hardware device that cannot be created is one run-level error, not a failure of each file:
    the file is opened again on the CPU to tell the two apart."""
    if not device.startswith("cuda"):
        return av.open(av_input(path)), False
    make_torch_context_current(device)
    try:
        container = av.open(av_input(path), hwaccel=_nvdec(device))
    except av.FFmpegError as error:
        try:
            av.open(av_input(path)).close()
        except av.FFmpegError:
            raise error from None  # the file itself: a failure of this video
        raise VfeError(
            f"NVDEC could not be started on {device} ({error}); the file opens without it. Check "
            "the driver (nvidia-smi, libnvcuvid.so.1) or use --data.decode_device cpu"
        ) from error
    streams = container.streams.video
    if streams and not _packs_on_the_gpu(streams[0]):
        container.close()
        return av.open(av_input(path)), False
    return container, True


def open_for_cpu(
    path: Path, num_threads: int
) -> tuple["av.container.InputContainer", "av.video.stream.VideoStream"]:
    """The file opened for decoding on the CPU with `num_threads` FFmpeg threads."""
    container = av.open(av_input(path))
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    stream.thread_count = num_threads
    return container, stream


def _stream_facts(stream: "av.video.stream.VideoStream") -> StreamFacts:
    known = stream.duration is not None and stream.frames > 0
    return StreamFacts(
        width=stream.width,
        height=stream.height,
        average_rate_hz=Fraction(stream.average_rate) if stream.average_rate else None,
        duration_seconds=stream.duration * stream.time_base if known else None,
    )


class PyAVVideo:
    """A video decoded sequentially by PyAV, on the CPU or (device `cuda[:N]`) with NVDEC.

    `num_threads` is FFmpeg's decoding thread count (0: as many as FFmpeg likes).
    """

    supports_segments = True
    supports_sparse = True
    file_errors = (av.FFmpegError, DecodeError)

    @staticmethod
    def check(device: str) -> None:
        if device.split(":")[0] != "cuda":
            return
        try:
            from av.codec.hwaccel import hwdevices_available
            from av.video.plane import VideoPlane
        except ImportError:  # a PyAV without hardware decoding at all
            hwdevices_available, VideoPlane = list, object
        # Frames kept on the GPU and read through DLPack came with PyAV 17.
        if not hasattr(VideoPlane, "__dlpack__"):
            raise VfeError(
                f"--data.decode_device cuda with --data.decoder pyav needs PyAV 17 or newer "
                f"(frames kept on the GPU); this is PyAV {av.__version__}"
            )
        if "cuda" not in hwdevices_available():
            raise VfeError(
                "--data.decode_device cuda: this PyAV's FFmpeg has no CUDA hardware decoding "
                f"(it has: {', '.join(hwdevices_available()) or 'none'}); "
                "PyAV's own wheels have it (pip install --force-reinstall av)"
            )

    @staticmethod
    def split_duration_seconds(path: Path) -> float | None:
        """The video stream's own duration, if the file may be split into segments (None if
        its container does not seek exactly, or the duration cannot be read).

        Taken from the video stream's last packets, not the container's header: a container
        declares its longest stream, and audio may run far past the video.
        """
        with av.open(av_input(path)) as container:
            if not container.streams.video or container.format.name not in SEEKABLE_FORMATS:
                return None
            stream = container.streams.video[0]
            time_base = stream.time_base
            first = stream.start_time
            declared = None
            if stream.duration is not None:
                declared = stream.duration * time_base
            elif container.duration is not None:
                declared = Fraction(container.duration, av.time_base)
            if first is None or declared is None:
                return None
            # The keyframe before the declared end (or the end of the video, if sooner), then
            # every video packet from there to the end of the file.
            container.seek(first + int(declared / time_base), stream=stream, backward=True)
            video_end = None
            for packet in container.demux(stream):
                start = packet.pts if packet.pts is not None else packet.dts
                if packet.size and start is not None:
                    end = start + (packet.duration or 0)
                    video_end = end if video_end is None else max(video_end, end)
            if video_end is None:
                return float(declared)
            return float((video_end - first) * time_base)

    def __init__(
        self, path: Path, device: str = "cpu", num_threads: int = 1, sparse: bool = False
    ) -> None:
        """`sparse`: the caller uses few of the frames and asks for their pictures in order
        (`vfe.decoding.sparse`); on the CPU only."""
        self.check(device)
        self._path, self._num_threads = path, num_threads
        self._sparse = sparse and device == "cpu"
        self._sparse_pictures: SparsePictures | None = None  # a sparse decode's pictures
        self._timeline = Timeline(Fraction(0))  # the sequential decode's (`_placed`)
        self.hardware_frames = 0  # frames NVDEC decoded, so far
        self._container, on_nvdec = _open_on(path, device)
        # Why FFmpeg's software decoder decodes a file opened for cuda (None: NVDEC was asked).
        self.software_reason = (
            "its pictures are not 8-bit 4:2:0 BT.601/709 of even size, which the GPU "
            "conversion takes, so FFmpeg decodes and converts them on the CPU"
            if device.startswith("cuda") and not on_nvdec
            else None
        )
        if not self._container.streams.video:
            self._container.close()
            raise DecodeError("the file has no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        self._stream.thread_count = num_threads
        rate = self._stream.guessed_rate or self._stream.average_rate
        self.facts = _stream_facts(self._stream)
        self._nominal = 1 / Fraction(rate) if rate else Fraction(0)
        self.seeks_exactly = self._container.format.name in SEEKABLE_FORMATS
        self.bytes_read = 0  # the furthest file position demuxed so far
        self._decode_errors = 0  # frames decoded with errors the decoder concealed, so far

    def frames(self, start_seconds: Fraction = Fraction(0)) -> Iterator[Frame]:
        """Frames in presentation order from `start_seconds` on, preceded by at least the
        frame on screen just before it (decoding starts at a keyframe before it, or at the
        file's start where the container does not seek exactly)."""
        if self._sparse and why_not_sparse(self._container, self._stream) is None:
            index, _ = index_packets(self._container, self._stream)
            if index is not None:
                try:
                    yield from self._sparse_frames(index, start_seconds)
                finally:
                    self._container.close()
                return
            self._container.close()  # read to its end: decoded sequentially, from the start
            self._container, self._stream = open_for_cpu(self._path, self._num_threads)
        try:
            if start_seconds <= 0 or not self.seeks_exactly:
                yield from self._placed(self._decode(), first_ticks=None)
                return
            first_ticks = next(self._decode(), (None, None))[0]
            self._rewind(0)
            yield from self._frames_from(start_seconds, first_ticks)
        finally:
            self._container.close()

    def _sparse_frames(self, index, start_seconds: Fraction) -> Iterator[Frame]:
        """Every frame with its time; a picture decoded only when asked for
        (`vfe.decoding.sparse`)."""
        # A function of the path, not a bound method: the pictures must not refer back to this
        # video. Such a cycle lives until the cyclic collector runs; in a DataLoader worker
        # forked before that, collecting its frames waited forever on FFmpeg threads that only
        # the parent had (swscale's slice threads), which hung the run.
        reopen = functools.partial(open_for_cpu, self._path, self._num_threads)
        pictures = SparsePictures(reopen, index, self._stream.time_base)
        context = self._stream.codec_context
        try:  # what a decoded picture holds, for the samplers' memory bounds
            blank = av.VideoFrame(context.width, context.height, context.pix_fmt)
            num_bytes = sum(plane.buffer_size for plane in blank.planes)
        except (ValueError, TypeError, av.FFmpegError):
            num_bytes = context.width * context.height * 3 // 2

        def frame_of(k: int, time_seconds: Fraction, duration_seconds: Fraction) -> Frame:
            return Frame(
                time_seconds,
                duration_seconds,
                lambda: _rgb_of(pictures.picture(k)),
                num_bytes,
                lambda: _packed_of(pictures.picture(k)),
                lambda: pictures.picture(k),
                lambda: pictures.want(k),
            )

        # Pictures are asked for until the samplers finish, after the last frame is handed
        # out: the file stays open as long as a Frame or this video refers to it.
        self._sparse_pictures = pictures
        for position, frame in sparse_frames(pictures, self._nominal, start_seconds, frame_of):
            self.bytes_read = max(self.bytes_read, position)
            yield frame
        self._check_complete(index.end_ticks, self._nominal)

    @property
    def first_frame_seconds(self) -> Fraction:
        """The first frame's time on the file's own axis (once frames were iterated)."""
        sparse = self._sparse_pictures
        first = sparse.first_frame_seconds if sparse is not None else self._timeline.first_seconds
        return first if first is not None else Fraction(0)

    @property
    def decode_errors(self) -> int:
        """Frames decoded with errors the decoder concealed, so far."""
        sparse = self._sparse_pictures
        return self._decode_errors + (len(sparse.corrupt) if sparse is not None else 0)

    @property
    def decode_mode(self) -> str:
        """ "sparse": only the frames used were decoded (and those they depend on);
        "sequential": every frame, in order."""
        sparse = self._sparse_pictures
        return "sparse" if sparse is not None and not sparse.sequential else "sequential"

    def _frames_from(self, start_seconds: Fraction, first_ticks: int | None) -> Iterator[Frame]:
        """Decode from a keyframe early enough that the first frame comes before
        `start_seconds` (from the file's start if need be); every frame from that keyframe on
        is what a decode from the start gives, so the frames equal the unsplit ones."""
        back_off = Fraction(1)
        while first_ticks is not None:
            target = start_seconds - back_off
            if target <= 0:
                break
            self._rewind(first_ticks + int(target / self._stream.time_base))
            frames = self._placed(self._decode(from_keyframe=True), first_ticks)
            first = next(frames, None)
            if first is not None and first.time_seconds < start_seconds:
                yield first
                yield from frames
                return
            frames.close()
            back_off *= 2
        self._rewind(0)
        yield from self._placed(self._decode(), first_ticks=None)

    def _rewind(self, ticks: int) -> None:
        """Seek to the keyframe at or before `ticks` (stream time base)."""
        self._container.seek(ticks, stream=self._stream, backward=True, any_frame=False)
        self._stream.codec_context.flush_buffers()

    def _placed(
        self, decoded: Iterator[tuple[int | None, av.VideoFrame]], first_ticks: int | None
    ) -> Iterator[Frame]:
        """`(ticks, frame)` pairs -> Frames with times from the video's first frame."""
        time_base = self._stream.time_base
        timeline = Timeline(self._nominal)
        self._timeline = timeline
        if first_ticks is not None:
            timeline.start_at(first_ticks * time_base)
        for count, (ticks, frame) in enumerate(decoded):
            if ticks is None and first_ticks is not None and count == 0:
                return  # a mid-file start needs a timestamp to place its first frame
            raw = None if ticks is None else ticks * time_base
            duration = frame.duration * time_base if frame.duration else None
            time_seconds, duration_seconds = timeline.place(raw, duration)
            num_bytes = sum(plane.buffer_size for plane in frame.planes)
            if frame.format.name == "cuda":  # NVDEC's: read where it is
                self.hardware_frames += 1
                packed = _packed_from_dlpack
            else:
                packed = _packed_of
            yield Frame(
                time_seconds,
                duration_seconds,
                lambda frame=frame: _rgb_of(frame),
                num_bytes,
                lambda frame=frame, packed=packed: packed(frame),
                lambda frame=frame: frame,
            )

    def _decode(self, from_keyframe: bool = False) -> Iterator[tuple[int | None, av.VideoFrame]]:
        """`(ticks, frame)` in presentation order from the current position to the end.

        `from_keyframe`: after a seek, drop what the decoder outputs before its first keyframe
        (pictures that reference frames before the seek point).
        """
        stream = self._stream
        pending: deque[av.VideoFrame] = deque()
        candidate_ticks: list[int] = []  # a heap
        packets_end = None  # the latest packet end, in ticks
        waiting_for_keyframe = from_keyframe

        def next_pair() -> tuple[int | None, av.VideoFrame]:
            ticks = heapq.heappop(candidate_ticks) if candidate_ticks else None
            return ticks, pending.popleft()

        for packet in self._container.demux(stream):
            if packet.is_corrupt:
                raise DecodeError(f"corrupt packet at {_seconds(packet.dts, stream.time_base)} s")
            if packet.pos is not None and packet.pos > self.bytes_read:
                self.bytes_read = packet.pos
            start = packet.pts if packet.pts is not None else packet.dts
            if packet.size and start is not None:
                end = start + (packet.duration or 0)
                packets_end = end if packets_end is None else max(packets_end, end)
            for frame in packet.decode():
                if waiting_for_keyframe and not frame.key_frame:
                    # Pictures before the first keyframe after a seek reference frames before
                    # it and decode with errors: they are dropped, errors and all. They lie
                    # before the segment, where the previous segment decodes them in order.
                    continue
                waiting_for_keyframe = False
                if frame.is_corrupt:
                    self._decode_errors += 1
                ticks = frame.pts if frame.pts is not None else frame.dts
                if ticks is not None:
                    heapq.heappush(candidate_ticks, ticks)
                pending.append(frame)
                if len(pending) > REORDER_FRAMES:
                    yield next_pair()
        while pending:
            yield next_pair()
        self._check_complete(packets_end, self._nominal)

    def _check_complete(self, packets_end: int | None, nominal: Fraction) -> None:
        """Raise if the packets stop well before the duration the container declares."""
        stream = self._stream
        if stream.duration is None or packets_end is None:
            return
        declared_end = (stream.start_time or 0) + stream.duration
        check_complete(
            packets_end * stream.time_base,
            declared_end * stream.time_base,
            stream.duration * stream.time_base,
            nominal,
        )


def _seconds(ticks: int | None, time_base: Fraction) -> str:
    return "?" if ticks is None else f"{float(ticks * time_base):.3f}"
