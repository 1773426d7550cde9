"""Decoded pictures through FFmpeg's own filters, as `ffmpeg -vf fps=R,scale=W:H,crop=...
-pix_fmt rgb24` makes them (the frames of HERO's extractors, which run that command).

PyAV's filter graph runs the libraries the `ffmpeg` command runs (libavfilter, libswscale), so
the frames are FFmpeg's: the fps filter's choice of frames (rounding each time to the nearest
output tick, repeating and dropping frames), swscale's bicubic scaling straight from the decoded
YUV, the crop, then RGB24.
"""

import itertools
from fractions import Fraction

import av
import numpy as np

# What `ffmpeg` inserts before the user's filters to show a picture upright, by the picture's
# counter-clockwise rotation in degrees (PyAV's `VideoFrame.rotation`).
AUTOROTATE = {
    90: [("transpose", "cclock")],
    180: [("hflip", ""), ("vflip", "")],
    270: [("transpose", "clock")],
}


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """`(width, height)` of a `width x height` picture scaled to `short_side` on its short side,
    the long side `int(long * short_side / short)` (HERO's `_get_output_dim`). HERO gives it the
    stream's coded size, so a rotated picture is scaled to the unrotated shape, as HERO does."""
    if height >= width:
        return short_side, int(height * short_side / width)
    return int(width * short_side / height), short_side


class FilteredFrames:
    """One video's pictures through `fps=frame_rate, scale (bicubic), centre crop, rgb24`.

    Push decoded `av.VideoFrame`s in presentation order with `push`, then `None` once at the
    end; each call returns the `(crop, crop, 3) uint8` pictures the graph output meanwhile,
    which are the filter's frames 0, 1, 2, ... at times k / frame_rate from the first frame.
    The graph is built from the first frame pushed (its size, format and time base).
    """

    def __init__(
        self,
        frame_rate_hz: Fraction,
        short_side: int,
        crop_size: int,
        scale_from: tuple[int, int] | None = None,
    ) -> None:
        """`scale_from`: the `(width, height)` the scaled size is computed from (HERO: the
        stream's, as ffprobe reports it); default: the first frame's."""
        self.frame_rate_hz = frame_rate_hz
        self.short_side = short_side
        self.crop_size = crop_size
        self.scale_from = scale_from
        self.num_output = 0
        self._graph: av.filter.Graph | None = None
        self._ended = False

    def _build(self, first: av.VideoFrame) -> av.filter.Graph:
        width, height = self.scale_from or (first.width, first.height)
        scaled_width, scaled_height = scaled_size(width, height, self.short_side)
        crop = self.crop_size
        if min(scaled_width, scaled_height) < crop:
            raise ValueError(
                f"a {scaled_width}x{scaled_height} picture cannot be cropped to {crop}"
            )
        graph = av.filter.Graph()
        source = graph.add_buffer(
            width=first.width,
            height=first.height,
            format=first.format.name,
            time_base=first.time_base,
        )
        rate = self.frame_rate_hz
        upright = [graph.add(name, args) for name, args in AUTOROTATE.get(first.rotation % 360, [])]
        chain = [
            source,
            *upright,
            graph.add("fps", f"fps={rate.numerator}/{rate.denominator}"),
            # The ffmpeg command gives scale filters its default sws flags, bicubic.
            graph.add("scale", f"{scaled_width}:{scaled_height}:flags=bicubic"),
            graph.add(
                "crop",
                f"{crop}:{crop}:{int((scaled_width - crop) / 2)}:{int((scaled_height - crop) / 2)}",
            ),
            graph.add("format", "rgb24"),
            graph.add("buffersink"),
        ]
        for upstream, downstream in itertools.pairwise(chain):
            upstream.link_to(downstream)
        graph.configure()
        return graph

    def push(self, frame: av.VideoFrame | None) -> list[np.ndarray]:
        """Feed one decoded picture (None: the end of the video); the pictures now ready."""
        if self._ended:
            raise RuntimeError("pictures pushed after the end")
        if frame is None:
            self._ended = True
            if self._graph is None:
                return []
        elif self._graph is None:
            self._graph = self._build(frame)
        self._graph.push(frame)
        pictures = []
        while True:
            try:
                output = self._graph.pull()
            except (BlockingIOError, EOFError):  # EAGAIN: wants more input; EOF: done
                break
            pictures.append(output.to_ndarray())
        self.num_output += len(pictures)
        return pictures
