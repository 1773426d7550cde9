"""Video datasets as webdataset tar shards, local or on object storage, read as a stream.

video2dataset's layout: each sample is the tar members sharing a key (the member's file name
up to its first dot, as webdataset groups them): `<key>.mp4`, `<key>.json`, `<key>.txt`. A
sample's video is its first member with a video suffix (or the suffix asked for); its bytes are
held in memory while it is decoded (PyAV reads them as a file-like object), never the whole
shard. Shards are named by URL, any fsspec URL (`s3://`, `gs://`, `http(s)://`, `hf://`, a
local path), with bash-style braces for ranges: `s3://bucket/videos/{00000..00999}.tar`.
"""

import posixpath
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

from vfe.decoding.source import InMemoryFile, StorageReader, storage_errors
from vfe.errors import VfeError

# Keys and shard names name output members and files: letters, digits and `_-.=+,@`, not
# starting with a dot (no folders, nothing hidden), as ids of a video list.
SAFE_NAME = re.compile(r"[A-Za-z0-9_\-=+,@][A-Za-z0-9_.\-=+,@]*")
SHARD_SUFFIX = ".tar"
# webdataset's grouping: the key is the path up to the first dot of the file name.
_MEMBER = re.compile(r"((?:.*/|)[^./]+)\.([^/]*)")


@dataclass(frozen=True)
class Shard:
    """One input shard: `url` as fsspec opens it; `name` (its file name less `.tar`) names
    its output shard; `size_bytes` shares shards out over ranks and jobs."""

    url: str
    name: str
    size_bytes: int


@dataclass(frozen=True)
class ShardSample:
    """One sample of a shard: its key and its video in memory, or why it has none."""

    key: str
    video: InMemoryFile | None
    problem: str | None = None


class ShardError(Exception):
    """The shard itself could not be read to its end (network, truncated or not a tar)."""


def expand_shard_urls(pattern: str) -> list[str]:
    """`{000..009}` and `{a,b}` ranges expanded, bash's way (as webdataset does), in order."""
    import braceexpand

    return list(braceexpand.braceexpand(pattern))


def list_shards(pattern: str) -> list[Shard]:
    """The shards `pattern` names, each checked to exist, with its size. An error names the
    first that is missing or whose name cannot name an output."""
    import fsspec

    shards = []
    for url in expand_shard_urls(pattern):
        base = posixpath.basename(url.rstrip("/"))
        name = base[: -len(SHARD_SUFFIX)] if base.endswith(SHARD_SUFFIX) else base
        if not base.endswith(SHARD_SUFFIX) or not SAFE_NAME.fullmatch(name):
            raise VfeError(
                f"--input_shards: {url!r} is not a shard name vfe can mirror (a file ending in "
                ".tar, named with letters, digits and _-.=+,@)"
            )
        try:
            filesystem, path = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as error:  # no filesystem for the protocol
            raise VfeError(f"--input_shards {url!r}: {error}") from error
        try:
            size = filesystem.size(path)
        except FileNotFoundError:
            raise VfeError(f"--input_shards: {url!r} does not exist") from None
        except storage_errors() as error:
            raise VfeError(f"--input_shards: {url!r} cannot be read: {error}") from error
        shards.append(Shard(url, name, int(size or 0)))
    if not shards:
        raise VfeError(f"--input_shards {pattern!r} names no shards")
    names = [shard.name for shard in shards]
    if len(set(names)) != len(names):
        twice = sorted({name for name in names if names.count(name) > 1})
        raise VfeError(
            f"--input_shards: shards named {', '.join(twice)} more than once (their outputs would "
            "share a name)"
        )
    return shards


def shard_samples(shard: Shard, video_suffixes: frozenset[str]) -> Iterator[ShardSample]:
    """The shard's samples, streamed in tar order. A sample without a video member, or whose
        key cannot name a file, comes with its problem; a shard that cannot be read to its end
        raises ShardError (after the samples read before it, and the reader's tries: a broken
    connection is reopened where it stopped, `vfe.decoding.source.StorageReader`)."""
    try:
        with (
            StorageReader(shard.url) as stream,
            tarfile.open(fileobj=stream, mode="r|*") as archive,
        ):
            yield from _grouped(archive, shard, video_suffixes)
    except (tarfile.TarError, OSError, EOFError) as error:  # the reader's, after its tries
        raise ShardError(f"{type(error).__name__}: {error}") from error


def _grouped(
    archive: tarfile.TarFile, shard: Shard, video_suffixes: frozenset[str]
) -> Iterator[ShardSample]:
    key, video, members = None, None, []
    for member in archive:
        if not member.isfile():
            continue
        base = posixpath.basename(member.name)
        if base.startswith("__"):  # webdataset's metadata members (`__index__`)
            continue
        parts = _MEMBER.fullmatch(member.name)
        if parts is None:  # no extension: not part of any sample
            continue
        member_key, extension = parts.groups()
        if member_key != key:
            if key is not None:
                yield _sample(shard, key, video, members)
            key, video, members = member_key, None, []
        members.append(extension)
        suffix = "." + extension.rsplit(".", 1)[-1].lower()
        if video is None and suffix in video_suffixes:
            reader = archive.extractfile(member)
            data = reader.read() if reader is not None else b""
            video = InMemoryFile(f"{shard.name}.tar/{member.name}", data)
    if key is not None:
        yield _sample(shard, key, video, members)


def _sample(shard: Shard, key: str, video: InMemoryFile | None, members: list[str]) -> ShardSample:
    if not SAFE_NAME.fullmatch(key):
        return ShardSample(key, None, f"key {key!r} cannot name a file")
    if video is None:
        return ShardSample(key, None, f"no video member (members: {', '.join(members)})")
    return ShardSample(key, video)


def shard_member(source: str) -> InMemoryFile | None:
    """The video a sample's recorded source names (`<shard url>.tar/<key>.<ext>`, as a run
    over shards records it), read from its shard, local or at a URL; None where the source
    names no shard member, or the shard or the member is gone."""
    shard_url, separator, member = source.rpartition(SHARD_SUFFIX + "/")
    if not separator or not shard_url:
        return None
    shard_url += SHARD_SUFFIX
    try:
        with (
            StorageReader(shard_url) as stream,
            tarfile.open(fileobj=stream, mode="r:") as archive,
        ):
            # The recorded name's suffix is lower case (`<key>.MP4` is recorded `<key>.mp4`).
            found = next((m for m in archive if m.name.lower() == member.lower()), None)
            reader = archive.extractfile(found) if found is not None else None
            if reader is None:
                return None
            return InMemoryFile(f"{posixpath.basename(shard_url)}/{found.name}", reader.read())
    except (tarfile.TarError, EOFError, OSError):  # gone, or not a readable tar
        return None
