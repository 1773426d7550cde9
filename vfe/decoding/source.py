"""Where a decoder reads a file from: a path on disk, a file's bytes held in memory (a member
of a tar shard, `vfe.sources.shards`), or a file at an fsspec URL (`s3://...`), read through
fsspec's buffered, seekable file; PyAV reads the last two as file-like objects."""

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


class RemoteFile:
    """A file at an fsspec URL (object storage, HTTP), read in place: each open is a seekable
    fsspec file that fetches the byte ranges read (with read-ahead), never a local copy."""

    def __init__(self, url: str) -> None:
        self.url = url

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.url).suffix

    def open(self, block_size: int | None = None) -> "io.RawIOBase":
        """`block_size`: bytes fetched per request (default: the filesystem's read-ahead)."""
        import fsspec

        filesystem, path = fsspec.core.url_to_fs(self.url)
        options = {} if block_size is None else {"block_size": block_size}
        return filesystem.open(path, "rb", **options)

    def as_posix(self) -> str:
        return self.url

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"RemoteFile({self.url!r})"


Source = Path | InMemoryFile | RemoteFile


def av_input(source: Source | str) -> "str | io.IOBase":
    """What `av.open` takes: the path as text, or a fresh reader (each open its own, so two
    decoders of one file never share a position)."""
    if isinstance(source, InMemoryFile):
        return io.BytesIO(source.data)
    if isinstance(source, RemoteFile):
        return source.open()
    return str(source)
