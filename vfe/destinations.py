"""Writing into folders other people share: names that come from data stay inside the
destination folder, and files appear whole under their name or not at all, through a temporary
created exclusively (never by a predictable name that a planted link could redirect).

Every name taken from data (HDF5 dataset names, qids, list ids, ...) goes through
`path_inside` before it is joined to a folder; every file vfe writes for others to read goes
through `write_atomically`.
"""

import contextlib
import os
import posixpath
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from vfe.errors import VfeError


def is_url(location: "str | Path | None") -> bool:
    """A location fsspec opens by protocol (`s3://`, `gs://`, `http://`, `file://`, ...)."""
    return location is not None and "://" in str(location)


def join_location(folder: str, name: str) -> str:
    """`folder/name` for a local folder or a URL."""
    return posixpath.join(folder, name) if is_url(folder) else os.path.join(folder, name)


# vfe's own folders inside an output folder: never outputs, never an input's output path.
RESERVED_NAMES = frozenset({".vfe-parts", ".vfe-claims", ".vfe-runs", ".vfe-search"})
# Temporaries are `.<final name>.<host>-<pid>.<random><TEMPORARY_SUFFIX>`: the owner is known
# (a run cleaning up old temporaries leaves a live process's alone) and the name unpredictable.
TEMPORARY_SUFFIX = ".vfe-tmp"


def path_inside(
    folder: Path, name: str, what: str, folders: bool = True, prefix: str = "", suffix: str = ""
) -> Path:
    """`folder / (prefix + name + suffix)`, checked: `name` is relative, has no empty, `.` or
    `..` part (no `/` at all unless `folders`), is not one of vfe's reserved names, and the
    joined path (links resolved) stays inside `folder`; else a one-line error naming `what`
    (e.g. "qid") and the bad value."""
    problem = None
    parts = name.split("/")
    if not name or name.startswith("/") or Path(name).is_absolute():
        problem = "is empty or absolute"
    elif any(part in ("", ".", "..") for part in parts):
        problem = "has an empty, '.' or '..' part"
    elif "\0" in name or "\\" in name:
        problem = "holds a NUL or backslash"
    elif not folders and len(parts) > 1:
        problem = "holds a '/'"
    elif parts[0] in RESERVED_NAMES:
        problem = f"starts with {parts[0]!r}, a folder vfe keeps for itself"
    joined = Path(folder) / f"{prefix}{name}{suffix}"
    if problem is None:
        root = Path(folder).resolve()
        if not joined.resolve().is_relative_to(root):
            problem = f"leads out of {str(folder)!r} through a link"
    if problem is not None:
        raise VfeError(
            f"{what} {name!r} {problem}: it cannot name a file inside {str(folder)!r}; "
            "rename it in the data"
        )
    return joined


def host_label() -> str:
    """This machine's name as it appears in file names (no dots)."""
    return socket.gethostname().replace(".", "_")


def temporary_name_prefix(final: Path) -> str:
    return f".{final.name}.{host_label()}-{os.getpid()}."


def temporary_owner(name: str) -> tuple[str, int] | None:
    """(host, pid) from a temporary's name `.<final>.<host>-<pid>.<random>.vfe-tmp`."""
    if not name.endswith(TEMPORARY_SUFFIX):
        return None
    fields = name[: -len(TEMPORARY_SUFFIX)].rsplit(".", 2)
    if len(fields) != 3:
        return None
    host, _, pid = fields[1].rpartition("-")
    return (host, int(pid)) if host and pid.isdigit() else None


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write `path` so that it is either absent or complete: `write(file)` into a temporary
    created exclusively beside it (`mkstemp`: `O_CREAT | O_EXCL`, no link followed), fsync,
    rename. The temporary is removed if anything fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        prefix=temporary_name_prefix(path), suffix=TEMPORARY_SUFFIX, dir=path.parent
    )
    try:
        with os.fdopen(descriptor, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp's 0o600, as a plain open would not
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once, at import: os.umask is not thread-safe
