"""Sparse decoding: only the frames a run uses, and the frames they are decoded from.

The file is demuxed once first (cheap: no decoding) into a `PacketIndex`: every packet's
timestamp, duration and keyframe flag. That gives every frame's time, exactly as the sequential
decode places them (`vfe.decoding.video.Timeline`), before any frame is decoded. Frames are then
handed out with their pictures decoded on demand (`SparsePictures.picture`): the backbones'
samplers pick frames by time as always, and only a picked frame is decoded, from its group of
pictures' keyframe on. On the way, frames nothing references are skipped (FFmpeg's
`skip_frame`, set per packet), and groups of pictures no pick falls in are never decoded: their
packets are demuxed and dropped, so no seek is involved.

Exactness: a frame's pixels are those of the sequential decode because every frame it depends
on is decoded (a whole group of pictures from its keyframe; from the keyframe before that for a
leading picture of an open GOP, which may reference the previous group). A pick the decoder
does not return as expected (missing, concealed errors, a timestamp the index does not have)
switches the video to a sequential decode from its start, with nothing skipped, and the file's
provenance says so (`decode: sequential`). Files whose timestamps cannot be read from packets
alone (a packet without one, repeated ones, a stream that does not start at a keyframe) and
containers or codecs outside the checked lists are decoded sequentially from the outset.
"""

import bisect
import itertools
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction

import av

from vfe.decoding.video import DecodeError, Frame, Timeline

# Containers whose packets carry each frame's presentation time (no decode-order timestamps as
# AVI's packed B-frames have, none half a frame off as MPEG-PS's), and codecs whose decoders put
# out one frame per packet: checked frame by frame on the real-world corpus
# (tests/test_sparse_decoding.py).
SPARSE_FORMATS = frozenset({"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "mpegts"})
SPARSE_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "av1", "libdav1d"})  # decoder names
# Decoders that read `skip_frame` for each frame they decode; dav1d reads it once, when it is
# opened (a frame skipped for one pick would be skipped for all): for it, only whole groups
# of pictures are skipped.
SKIP_PER_FRAME_CODECS = frozenset({"h264", "hevc", "vp8", "vp9"})
# Packets kept after they are demuxed, in groups of pictures: a pick in an earlier group is
# decoded from packets demuxed again from the file's start.
KEPT_GROUPS = 3


@dataclass(frozen=True)
class PacketIndex:
    """The video stream's packets in decode order (empty ones left out)."""

    ticks: list[int]  # presentation timestamp (stream time base)
    durations: list[int]  # 0 where the file gives none
    # Decoded for the frames after them but never shown: before an MP4 edit list's start
    # (FFmpeg drops their frames), so not frames of the video.
    discarded: frozenset[int]
    positions: list[int]  # byte offset in the file (-1 where unknown)
    keyframes: list[int]  # decode positions of the keyframes, increasing; the first is 0
    end_ticks: int  # the latest packet end

    def presentation_order(self) -> list[int]:
        """Decode positions of the video's frames, sorted by presentation time."""
        shown = (p for p in range(len(self.ticks)) if p not in self.discarded)
        return sorted(shown, key=self.ticks.__getitem__)

    def group_start(self, position: int) -> int:
        """The decode position of the keyframe that `position`'s group of pictures starts at,
        or of the keyframe before for a leading picture (shown before its keyframe, so it may
        reference the group before)."""
        group = bisect.bisect_right(self.keyframes, position) - 1
        start = self.keyframes[group]
        if self.ticks[position] < self.ticks[start] and group > 0:
            start = self.keyframes[group - 1]
        return start


def why_not_sparse(container: "av.container.InputContainer", stream) -> str | None:
    """Why the file is decoded sequentially whatever the run needs, or None."""
    if container.format.name not in SPARSE_FORMATS:
        return f"container {container.format.name}"
    if stream.codec_context.name not in SPARSE_CODECS:
        return f"codec {stream.codec_context.name}"
    return None


def index_packets(
    container: "av.container.InputContainer", stream
) -> tuple[PacketIndex | None, str | None]:
    """Demux every packet of `stream` (no decoding): the index, or None and why the frames'
    times cannot be taken from it. A corrupt packet raises `DecodeError`, as decoding does."""
    ticks: list[int] = []
    durations: list[int] = []
    positions: list[int] = []
    keyframes: list[int] = []
    discarded: set[int] = set()
    end_ticks = None
    for packet in container.demux(stream):
        if packet.is_corrupt:
            start = packet.dts if packet.dts is not None else packet.pts
            seconds = "?" if start is None else f"{float(start * stream.time_base):.3f}"
            raise DecodeError(f"corrupt packet at {seconds} s")
        if not packet.size:
            continue
        if packet.pts is None:
            return None, "a packet without a presentation timestamp"
        if packet.is_keyframe:
            keyframes.append(len(ticks))
        if packet.is_discard:
            discarded.add(len(ticks))
        ticks.append(packet.pts)
        durations.append(packet.duration or 0)
        positions.append(packet.pos if packet.pos is not None else -1)
        end = packet.pts + (packet.duration or 0)
        end_ticks = end if end_ticks is None else max(end_ticks, end)
    if not ticks:
        return None, "no packets"
    if not keyframes or keyframes[0] != 0:
        return None, "the stream does not start at a keyframe"
    if len(set(ticks)) != len(ticks):
        return None, "repeated timestamps"
    if len(discarded) == len(ticks):
        return None, "no packet is shown"
    index = PacketIndex(ticks, durations, frozenset(discarded), positions, keyframes, end_ticks)
    return index, None


class SparsePictures:
    """The pictures of an indexed stream, decoded on demand (see the module doc).

    `picture(k)` is frame k's picture (k in presentation order). Pictures of frames whose
    `Frame` the caller still holds (registered with `track`) are kept once decoded, so a frame
    used twice is decoded once; nothing else is kept.
    """

    def __init__(
        self,
        open_stream: Callable[[], tuple["av.container.InputContainer", object]],
        index: PacketIndex,
        time_base: Fraction,
    ) -> None:
        self._open_stream = open_stream
        self.index = index
        self.time_base = time_base
        self.order = index.presentation_order()  # presentation -> decode position
        self._frame_at = {index.ticks[p]: k for k, p in enumerate(self.order)}
        self._frame_in = {p: k for k, p in enumerate(self.order)}  # decode position -> frame
        # Per group of pictures, its last frame in presentation order (-1: none shown).
        bounds = [*index.keyframes, len(index.ticks)]
        self._group_last_frame = [
            max((self._frame_in[p] for p in range(a, b) if p in self._frame_in), default=-1)
            for a, b in itertools.pairwise(bounds)
        ]
        self._yielded = -1  # the last frame handed out so far
        self._wanted: set[int] = set()  # frames about to be asked for (`want`)
        self.first_frame_seconds: Fraction | None = None  # on the file's axis (`sparse_frames`)
        self._keyframe_set = frozenset(index.keyframes)
        self.sequential = False  # a pick came out unlike the sequential decode's: no skipping
        self.decoded_frames = 0  # pictures the decoder put out (for benchmarks and tests)
        self.corrupt: set[int] = set()  # frames decoded with errors the decoder concealed
        self._held: dict[int, weakref.ref] = {}  # frame -> the caller's Frame
        self._pictures: dict[int, av.VideoFrame] = {}
        self._container = None
        self._codec = None
        self._demuxed: Iterator | None = None
        self._next_demuxed = 0  # decode position of the next packet the demuxer gives
        self._packets: dict[int, av.Packet] = {}  # kept packets, by decode position
        self._fed = -1  # decode position of the last packet sent to the decoder
        self._run_start = 0  # decode position of the keyframe the decoder's run began at
        self._skipped: set[int] = set()  # decode positions the run sent to be skipped
        self._last_out = -1  # the last frame the run put out
        self._running = False  # the decoder holds a run of packets from a keyframe
        self._drop_before: int | None = None  # a run's leading pictures (ticks): dropped
        self._target: int | None = None
        self._passed_target = False

    def want(self, k: int) -> None:
        """Frame k's picture is about to be asked for, with the others wanted: they are
        decoded in one pass, none skipped."""
        if k not in self._pictures:
            self._wanted.add(k)

    def track(self, k: int, frame: Frame) -> None:
        self._yielded = max(self._yielded, k)
        self._held[k] = weakref.ref(frame)
        if len(self._held) > 4096:
            self._held = {i: ref for i, ref in self._held.items() if ref() is not None}

    def _is_held(self, k: int) -> bool:
        ref = self._held.get(k)
        return ref is not None and ref() is not None

    def picture(self, k: int) -> av.VideoFrame:
        """Frame k's picture, exactly as a sequential decode gives it."""
        self._pictures = {i: p for i, p in self._pictures.items() if i == k or self._is_held(i)}
        self._wanted.discard(k)
        if k in self._pictures:
            return self._pictures[k]
        position = self.order[k]
        for _ in range(2):
            start = 0 if self.sequential else self.index.group_start(position)
            # Sent already, and skipped or already put out (and not kept): decode it again.
            passed = position <= self._fed and (position in self._skipped or k <= self._last_out)
            if not self._running or passed or not self._run_start <= start <= self._fed + 1:
                self._restart(start)
            picture = self._decode_until(k, position)
            if picture is not None:
                return picture
            if self.sequential:
                break
            self.sequential = True  # from here on, as the sequential decode does it
            self.close()  # and with a decoder opened afresh
        raise DecodeError(
            f"the frame at {float(self.index.ticks[position] * self.time_base):.3f} s is not among "
            "the frames its decoder gives (--data.sparse_decode false decodes every frame)"
        )

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def _restart(self, start: int) -> None:
        """End the decoder's run (its frames still inside are put out first) and begin one at
        the keyframe at decode position `start`."""
        if self._running:
            self._drain()
        if self._container is None or start < min(self._packets, default=self._next_demuxed):
            self._reopen()
        self._fed, self._run_start = start - 1, start
        self._skipped, self._last_out = set(), -1
        self._running = True
        self._drop_before = self.index.ticks[start] if start > 0 else None

    def _reopen(self) -> None:
        self.close()
        self._container, self._stream = self._open_stream()
        self._codec = self._stream.codec_context
        self._skips_per_frame = self._codec.name in SKIP_PER_FRAME_CODECS
        self._demuxed = iter(self._container.demux(self._stream))
        self._next_demuxed = 0
        self._packets = {}

    def _packet(self, position: int) -> av.Packet:
        """The packet at decode position `position`, demuxing up to it."""
        while self._next_demuxed <= position:
            packet = next(self._demuxed, None)
            if packet is None:
                raise DecodeError("the file ended before its packets did on the first read")
            if not packet.size:
                continue
            demuxed = self._next_demuxed
            if packet.pts != self.index.ticks[demuxed]:
                raise DecodeError("the file's packets differ between two reads")
            self._packets[demuxed] = packet
            self._next_demuxed += 1
            if demuxed in self._keyframe_set:  # keep the last few groups only
                group = bisect.bisect_right(self.index.keyframes, demuxed) - 1
                oldest = self.index.keyframes[max(0, group - KEPT_GROUPS)]
                for old in [p for p in self._packets if p < oldest]:
                    del self._packets[old]
        return self._packets[position]

    def _decode_until(self, k: int, position: int) -> av.VideoFrame | None:
        """Send packets until frame k comes out (None: it did not, as it should have)."""
        self._target, self._passed_target = k, False
        total = len(self.index.ticks)
        while k not in self._pictures and not self._passed_target:
            following = self._fed + 1
            group_over = following in self._keyframe_set and following > position
            if following >= total or (not self.sequential and (group_over or self._done(position))):
                self._drain()
                break
            packet = self._packet(following)
            if self._skips_per_frame:
                wanted = (
                    self.sequential
                    or following == position
                    or self._may_be_asked(self._frame_in.get(following), k)
                )
                self._codec.skip_frame = "DEFAULT" if wanted else "NONREF"
                if not wanted:
                    self._skipped.add(following)
            for picture in self._codec.decode(packet):
                self._put_out(picture)
            self._fed = following
        self._target = None
        return self._pictures.get(k)

    def _may_be_asked(self, k: int | None, target: int) -> bool:
        """Whether frame k is decoded rather than skipped: wanted, or after every frame wanted
        now and either not handed out yet or still held (the next call's frames, whose
        packets may come before the target's: B-frames are sent after the frames they
        precede)."""
        if k is None:
            return False
        if k in self._wanted:
            return True
        last = max(self._wanted, default=target)
        return k > max(last, target) and (k > self._yielded or self._is_held(k))

    def _done(self, position: int) -> bool:
        """Whether nothing more of the target's group (at decode position `position`, already
        sent) can be asked for soon: every frame of it handed out, none wanted but unsent.
        Then the decoder is drained at once, rather than sent more packets to push the
        target out."""
        if self._fed < position:
            return False
        group = bisect.bisect_right(self.index.keyframes, position) - 1
        if self._yielded < self._group_last_frame[group]:
            return False
        return not any(self.order[k] > self._fed for k in self._wanted)

    def _drain(self) -> None:
        """Put out the frames the decoder still holds and reset it for a new run."""
        for picture in self._codec.decode(None):
            self._put_out(picture)
        self._codec.flush_buffers()
        self._running = False

    def _put_out(self, picture: av.VideoFrame) -> None:
        drop_before = self._drop_before
        if drop_before is not None and picture.pts is not None and picture.pts < drop_before:
            return  # a leading picture of the run's first group: it may lack references
        k = self._frame_at.get(picture.pts)
        if k is None:
            if self.sequential:
                raise DecodeError(f"the decoder gave a frame at {picture.pts}, not in the file")
            self._passed_target = True  # not what the index says: decode sequentially
            return
        self.decoded_frames += 1
        self._last_out = max(self._last_out, k)
        if self._target is not None and k > self._target and self._target not in self._pictures:
            self._passed_target = True  # the pick was not put out
        if picture.is_corrupt:
            if k == self._target and not self.sequential:
                self._passed_target = True  # as the sequential decode gives it, to be sure
                return
            self.corrupt.add(k)
        if k == self._target or k in self._wanted or self._is_held(k):
            self._pictures[k] = picture


def sparse_frames(
    pictures: SparsePictures,
    nominal_frame_seconds: Fraction,
    start_seconds: Fraction,
    frame_of: Callable[[int, Fraction, Fraction], Frame],
) -> Iterator[tuple[int, Frame]]:
    """`(byte position, Frame)` of every frame from the one on screen just before
    `start_seconds` on, with the times the sequential decode gives; `frame_of(k, time,
    duration)` makes frame k's `Frame` (its pictures from `pictures.picture(k)`)."""
    index, time_base = pictures.index, pictures.time_base
    timeline = Timeline(nominal_frame_seconds)
    placed = []
    for position in pictures.order:
        duration = index.durations[position]
        placed.append(
            timeline.place(
                index.ticks[position] * time_base, duration * time_base if duration else None
            )
        )
    pictures.first_frame_seconds = timeline.first_seconds
    first = max(0, bisect.bisect_left([time for time, _ in placed], start_seconds) - 1)
    for k in range(first, len(placed)):
        frame = frame_of(k, *placed[k])
        pictures.track(k, frame)
        yield index.positions[pictures.order[k]], frame
