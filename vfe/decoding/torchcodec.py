"""torchcodec's streaming decoder (Demuxer -> packet decoder -> colour converter), on the CPU or,
with NVDEC, on a CUDA device. Needs a system FFmpeg (4-8)."""

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import torch

from vfe.decoding.video import Frame, Timeline, seconds_fraction
from vfe.errors import VfeError


class TorchcodecVideo:
    """A video decoded sequentially by torchcodec; frames stay on the decoding device."""

    bytes_read = 0  # the library does not say how far it has read

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
        (stream,) = self._demuxer.streams
        fps = stream.metadata.average_fps_from_header
        self._nominal = seconds_fraction(1 / fps) if fps else seconds_fraction(0)
        self._decoder = stream.make_decoder(device=self._device, num_ffmpeg_threads=num_threads)
        self._converter = ColorConverter(device=self._device)

    def frames(self, start_seconds: Fraction = Fraction(0)) -> Iterator[Frame]:
        if start_seconds:
            raise NotImplementedError("this decoder decodes whole videos only")
        timeline = Timeline(self._nominal)

        def frame_of(raw) -> Frame:
            time_seconds, duration = timeline.place(
                seconds_fraction(raw.pts_seconds), seconds_fraction(raw.duration_seconds)
            )
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
