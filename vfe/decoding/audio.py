"""A video's audio on its clip grid: each clip window's samples, mono, at the backbone's rate.

Time 0 is the video's first frame, as for the video backbones (`vfe.data.clip_grid`), and an
audio file's first sample (`decode_audio` with no origin): the audio
is placed by its own timestamps against that frame's, so a track that starts late (or early:
edit lists, `start_time`) lands where it plays. Mono is the mean of the channels, as librosa's
`to_mono` makes it (swresample's own downmix weighs a stereo pair by 1/sqrt(2) each, 3 dB
louder, which moves a log-mel front end). The resampler is the backbone's recipe's:
"swresample" (FFmpeg's, through PyAV's `AudioResampler`) or "soxr_hq" (librosa's default, the
`soxr` library at its HQ setting, on the whole decoded track at once as librosa does it). The
track is taken as continuous from its first sample.
Windows past the end of the audio (or before its start) are zeros.
"""

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from vfe.decoding.source import av_input
from vfe.decoding.video import DecodeError

NO_AUDIO_STREAM = "no audio stream"


@dataclass(frozen=True)
class AudioWindows:
    """`samples`: `(num_clips, window_samples) float32`, clip i's window of audio;
    `audio_seconds`: how long the file's audio is (decoded up to the last window used, or the
    whole stream's declared duration where the file gives one)."""

    samples: np.ndarray
    audio_seconds: float


@dataclass(frozen=True)
class AudioTrack:
    """`samples`: `(N,) float32` mono at `sample_rate_hz`, its first sample playing at
    `start_seconds` from time 0; `decoded_seconds`: how long the decoded audio lasts (its
    samples at the file's own rate, whatever the rate asked); `audio_seconds`: the stream's
    declared duration where the file gives one, else `decoded_seconds`."""

    samples: np.ndarray
    sample_rate_hz: int
    start_seconds: Fraction
    decoded_seconds: Fraction
    audio_seconds: float

    def windows(
        self, window_starts_seconds: list[Fraction], window_seconds: Fraction
    ) -> np.ndarray:
        """`(len(starts), window_samples) float32`: `[start, start + window_seconds)` each,
        zeros where the track has no audio."""
        rate = self.sample_rate_hz
        window_samples = round(window_seconds * rate)
        windows = np.zeros((len(window_starts_seconds), window_samples), dtype=np.float32)
        start_sample = round(self.start_seconds * rate)  # where the track begins
        for row, start in enumerate(window_starts_seconds):
            begin = round(start * rate) - start_sample  # into `samples`
            lo, hi = max(begin, 0), min(begin + window_samples, len(self.samples))
            if hi > lo:
                windows[row, lo - begin : hi - begin] = self.samples[lo:hi]
        return windows


def read_audio_windows(
    path: Path,
    sample_rate_hz: int,
    origin_seconds: Fraction,
    window_starts_seconds: list[Fraction],
    window_seconds: Fraction,
    stream_index: int | None = None,
    resampler: str = "swresample",
) -> AudioWindows:
    """The windows `[start, start + window_seconds)` (seconds from the video's first frame,
    which is at `origin_seconds` on the file's time axis) of the audio stream `stream_index`
    (default: the first). Raises `DecodeError(NO_AUDIO_STREAM)` if there is
    none."""
    if not window_starts_seconds:
        return AudioWindows(np.zeros((0, round(window_seconds * sample_rate_hz)), np.float32), 0.0)
    track = decode_audio(
        path,
        sample_rate_hz,
        origin_seconds,
        max(window_starts_seconds) + window_seconds,
        stream_index,
        resampler,
    )
    return AudioWindows(track.windows(window_starts_seconds, window_seconds), track.audio_seconds)


def decode_audio(
    path: Path,
    sample_rate_hz: int,
    origin_seconds: Fraction | None = None,
    until_seconds: Fraction | None = None,
    stream_index: int | None = None,
    resampler: str = "swresample",
) -> AudioTrack:
    """The audio stream `stream_index` (default: the first) as a mono track at
    `sample_rate_hz`, placed against time 0 at `origin_seconds` on the file's time axis (None:
    the track's own first sample, as for an audio file), decoded up to `until_seconds` from
    time 0 (None: to its end). Raises `DecodeError(NO_AUDIO_STREAM)` if there is none."""
    with av.open(av_input(path)) as container:
        stream = _audio_stream(container, stream_index)
        source_rate = stream.rate or sample_rate_hz
        # soxr resamples afterwards: FFmpeg only converts to float, at the file's own rate.
        decode_rate = sample_rate_hz if resampler == "swresample" else source_rate
        converter = av.AudioResampler(format="fltp", rate=decode_rate)  # channels kept
        track_start: Fraction | None = None  # the audio's first sample, from time 0
        pieces: list[np.ndarray] = []
        num_samples = 0
        source_samples = 0  # decoded, at the file's own rate
        margin = Fraction(1, 10)  # the resampling filter's reach past the last window
        for frame in container.decode(stream):
            if track_start is None:
                raw = Fraction(frame.pts * frame.time_base) if frame.pts is not None else 0
                track_start = raw - (raw if origin_seconds is None else origin_seconds)
            source_samples += frame.samples
            for converted in converter.resample(frame):
                pieces.append(converted.to_ndarray().mean(axis=0, dtype=np.float32))
                num_samples += converted.samples
            reached = track_start + Fraction(num_samples, decode_rate)
            if until_seconds is not None and reached >= until_seconds + margin:
                break
        else:
            for converted in converter.resample(None):
                pieces.append(converted.to_ndarray().mean(axis=0, dtype=np.float32))
                num_samples += converted.samples
        declared = (
            float(stream.duration * stream.time_base) if stream.duration is not None else None
        )
    audio = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    if resampler == "soxr_hq" and decode_rate != sample_rate_hz and len(audio):
        import soxr

        length = -(-len(audio) * sample_rate_hz // decode_rate)  # librosa's fix_length
        audio = soxr.resample(audio, decode_rate, sample_rate_hz, quality="soxr_hq")
        audio = np.pad(audio, (0, max(0, length - len(audio))))[:length].astype(np.float32)
    decoded = Fraction(source_samples, source_rate)
    return AudioTrack(
        audio,
        sample_rate_hz,
        track_start or Fraction(0),
        decoded,
        declared if declared is not None else float(decoded),
    )


def _audio_stream(container: "av.container.InputContainer", index: int | None):
    streams = container.streams.audio
    if not streams:
        raise DecodeError(NO_AUDIO_STREAM)
    if index is None:
        return streams[0]  # the first audio stream (`--data.audio_stream N` picks another)
    if not 0 <= index < len(streams):
        raise DecodeError(f"no audio stream {index} (the file has {len(streams)})")
    return streams[index]
