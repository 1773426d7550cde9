"""torchcodec's streaming decoder (Demuxer -> packet decoder -> colour converter), on the CPU or,
with NVDEC, on a CUDA device. Needs a system FFmpeg (4-8)."""

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import torch

from vfe.decoding.video import DecodeError, Frame, Timeline, check_complete, seconds_fraction
from vfe.errors import VfeError


class TorchcodecVideo:
    """A video decoded sequentially by torchcodec; frames stay on the decoding device."""

    # torchcodec's C++ core raises RuntimeError (and ValueError) for files it cannot read.
    file_errors = (RuntimeError, ValueError, DecodeError)

    @staticmethod
    def check(device: str) -> None:
        try:
            # `import torchcodec` succeeds without FFmpeg; its decoders load FFmpeg's libraries
            # on first use, through this function. Loading here turns a missing FFmpeg into one
            # error at start instead of a failure of every video.
            from torchcodec._internally_replaced_utils import load_core_libraries

            load_core_libraries()
        except (ImportError, RuntimeError, OSError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise VfeError(
                "--data.decoder torchcodec needs the torchcodec package and FFmpeg's shared "
                f"libraries (pip install -e '.[torchcodec]'; apt-get install ffmpeg): "
                f"{type(error).__name__}: {first_line}"
            ) from error
        if device == "cuda" and not torch.cuda.is_available():
            raise VfeError("--data.decode_device cuda needs a CUDA GPU; PyTorch sees none here")

    def __init__(self, path: Path, device: str = "cpu", num_threads: int = 1) -> None:
        from torchcodec.decoders import ColorConverter, Demuxer

        self._device = torch.device(device)
        self._demuxer = Demuxer(str(path), streams="video")
        if not self._demuxer.streams:
            raise DecodeError("the file has no video stream")
        stream = self._demuxer.streams[0]
        self._metadata = stream.metadata
        self.bytes_read = 0  # the library does not say how far it has read
        self.decode_errors = 0  # nor which errors it concealed
        self.hardware_frames = None  # nor which frames NVDEC decoded
        self.decode_mode = "sequential"  # every frame, in order
        fps = stream.metadata.average_fps_from_header
        self._nominal = seconds_fraction(1 / fps) if fps else seconds_fraction(0)
        self._decoder = stream.make_decoder(device=self._device, num_ffmpeg_threads=num_threads)
        self._converter = ColorConverter(device=self._device)

    def frames(self, start_seconds: Fraction = Fraction(0)) -> Iterator[Frame]:
        if start_seconds:
            raise NotImplementedError("this decoder decodes whole videos only")
        timeline = Timeline(self._nominal)
        decoded_end = None  # raw seconds

        def frame_of(raw) -> Frame:
            nonlocal decoded_end
            start, length = (
                seconds_fraction(raw.pts_seconds),
                seconds_fraction(raw.duration_seconds),
            )
            decoded_end = (
                start + length if decoded_end is None else max(decoded_end, start + length)
            )
            time_seconds, duration = timeline.place(start, length)
            return Frame(
                time_seconds,
                duration,
                lambda: self._converter.convert(raw).data.permute(1, 2, 0),
            )

        for packet in self._demuxer:
            for raw in self._decoder.decode(packet):
                yield frame_of(raw)
        for raw in self._decoder.drain():
            yield frame_of(raw)
        declared = self._metadata.duration_seconds_from_header
        if decoded_end is not None and declared:
            begin = seconds_fraction(self._metadata.begin_stream_seconds_from_header or 0)
            declared_fraction = seconds_fraction(declared)
            check_complete(decoded_end, begin + declared_fraction, declared_fraction, self._nominal)
