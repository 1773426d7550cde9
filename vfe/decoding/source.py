"""Where a decoder reads a file from: a path on disk, a file's bytes held in memory (a member
of a tar shard, `vfe.sources.shards`), or a file at an fsspec URL (`s3://...`), read through
fsspec's buffered, seekable file; PyAV reads the last two as file-like objects.

Files at URLs are read through `StorageReader`: a read that the storage breaks (a connection
cut mid-body, a timeout, a 5xx) reopens the file where it stopped and tries again, a few times
with growing waits; after the last try it raises OSError naming the URL, so a shard or a video
fails alone rather than the run.
"""

import io
import sys
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

READ_TRIES = 4  # per read: the first and three more
FIRST_WAIT_SECONDS = 1.0  # then 2 s, 4 s

# The network errors of the client libraries under fsspec's filesystems that are not OSError:
# aiohttp (http, gcs), botocore and urllib3 (s3), requests (some others).
_CLIENT_ERRORS = (
    ("aiohttp", "ClientError"),
    ("botocore.exceptions", "BotoCoreError"),
    ("botocore.exceptions", "ClientError"),
    ("urllib3.exceptions", "HTTPError"),
    ("requests", "RequestException"),
)

T = TypeVar("T")


def storage_errors() -> tuple[type[BaseException], ...]:
    """What a read from storage raises when the storage failed: OSError (fsspec's own errors,
    timeouts) and the client errors above, of the libraries loaded (one not loaded raised
    nothing)."""
    errors: list[type[BaseException]] = [OSError]
    for module_name, name in _CLIENT_ERRORS:
        module = sys.modules.get(module_name)
        if module is not None and isinstance(getattr(module, name, None), type):
            errors.append(getattr(module, name))
    return tuple(errors)


class StorageReader(io.RawIOBase):
    """A file at an fsspec URL, seekable, reopened where it stopped after a storage error
    (`READ_TRIES` tries per read); `retries`: how many reopenings it took."""

    def __init__(self, url: str, block_size: int | None = None) -> None:
        super().__init__()
        self.url = url
        self._options: dict[str, Any] = {} if block_size is None else {"block_size": block_size}
        self._file: Any = None
        self._position = 0
        self._size: int | None = None
        self.retries = 0

    def _opened(self) -> Any:
        if self._file is None:
            import fsspec

            filesystem, path = fsspec.core.url_to_fs(self.url)
            file = filesystem.open(path, "rb", **self._options)
            if self._position:
                if not file.seekable():
                    file.close()
                    raise OSError(f"the server cannot restart it at byte {self._position}")
                file.seek(self._position)
            self._file = file
        return self._file

    def _tried(self, action: Callable[[Any], T]) -> T:
        wait, attempt = FIRST_WAIT_SECONDS, 1
        while True:
            try:
                return action(self._opened())
            except FileNotFoundError:
                raise  # gone, not a failing read
            except storage_errors() as error:
                self._drop()
                problem = f"{type(error).__name__}: {error}"
                if attempt == READ_TRIES:
                    raise OSError(f"{self.url}: {problem} (after {READ_TRIES} tries)") from error
                attempt += 1
                from vfe.messages import say_on_this_rank  # not at the top: it loads torch

                say_on_this_rank(
                    f"{self.url}: {problem}; reading again from byte {self._position} in "
                    f"{wait:g} s (try {attempt} of {READ_TRIES})"
                )
                self.retries += 1
                time.sleep(wait)
                wait *= 2

    def _drop(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()
            except storage_errors():
                pass  # the broken connection is being left anyway

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._tried(lambda file: file.read(len(buffer)))
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)

    @property
    def size(self) -> int:
        """The file's size in bytes."""
        if self._size is None:
            self._size = int(self._tried(lambda file: file.size))
        return self._size

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._position
        elif whence == io.SEEK_END:
            offset += self.size
        elif whence != io.SEEK_SET:
            raise ValueError(f"{self.url}: seek whence {whence}")
        if offset < 0:
            raise ValueError(f"{self.url}: seek to byte {offset}")
        self._position = offset
        if self._file is not None:
            self._file.seek(offset)
        return offset

    def close(self) -> None:
        self._drop()
        super().close()


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
        return StorageReader(self.url, block_size)

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
