"""Where a decoder reads a file from: a path on disk, or a file's bytes held in memory (a
member of a tar shard, `vfe.sources.shards`), which PyAV reads as a file-like object."""

import io
from pathlib import Path, PurePosixPath


class InMemoryFile:
    """A file's bytes in memory, named as it was in its shard (`<shard>.tar/<key>.mp4`).

    Not a path: nothing on disk has that name, so it is opened only through `av_input`.
    """

    def __init__(self, name: str, data: bytes) -> None:
        self.name = name
        self.data = data

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    @property
    def size_bytes(self) -> int:
        return len(self.data)

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"InMemoryFile({self.name!r}, {len(self.data)} bytes)"


Source = Path | InMemoryFile


def av_input(source: Source | str) -> "str | io.BytesIO":
    """What `av.open` takes: the path as text, or a fresh reader over the bytes (each open its
    own, so two decoders of one file never share a position)."""
    if isinstance(source, InMemoryFile):
        return io.BytesIO(source.data)
    return str(source)
