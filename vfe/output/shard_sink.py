"""Output shards: a run over input shards (`vfe.sources.shards`) writes, per backbone, one
output shard per input shard, named as it:

- `<name>.tar` (`--output_format webdataset`): `<key>.npz` per sample written (the arrays and
  provenance of a feature file; webdataset's readers take it as the sample's `npz`), in the
  input's order; or `<name>.parquet` (`parquet`): a row per sample, `key`, `features` (a list
  of fixed-size lists), `timestamps`, `fps`, `clip_length` and `provenance` (JSON text), for
  pyarrow, pandas and Hugging Face datasets;
- `<name>.stats.json`, written **last**: the shard's done marker (counts, failures with their
  reasons, the run's settings, wall time). A shard without it is not done: a rerun redoes it.

The folder is local or any fsspec URL. Locally each file is written to a temporary created
exclusively beside it and renamed into place; on object storage the tar is staged in a local
temporary file, uploaded, then the stats object is written. A shard that could not be read to
its end writes no stats (its error is reported; a rerun tries it again).
"""

import contextlib
import io
import json
import os
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from vfe.data.records import ShardEnd, VideoStart
from vfe.decoding.source import storage_errors
from vfe.destinations import (
    TEMPORARY_SUFFIX,
    is_url,
    temporary_name_prefix,
    write_atomically,
)
from vfe.destinations import join_location as join
from vfe.planning.claims import Claims
from vfe.planning.shard_plan import done_marker
from vfe.sources.shards import Shard

SUFFIXES = {"webdataset": ".tar", "parquet": ".parquet"}
PARQUET_ROWS_PER_GROUP = 256  # videos held in memory before they are written


class ShardWriter:
    """One backbone's output shard being filled, in a temporary file until `finish`."""

    def __init__(
        self,
        folder: str,
        shard: Shard,
        settings: dict[str, Any],
        run_id: str,
        output_format: str = "webdataset",
    ) -> None:
        self.folder, self.shard, self.settings, self.run_id = folder, shard, settings, run_id
        self.output_format = output_format
        self.final = join(folder, shard.name + SUFFIXES[output_format])
        staging = tempfile.gettempdir() if is_url(folder) else folder
        os.makedirs(staging, exist_ok=True)
        descriptor, self._temporary = tempfile.mkstemp(
            prefix=temporary_name_prefix(Path(self.final)), suffix=TEMPORARY_SUFFIX, dir=staging
        )
        self._file = os.fdopen(descriptor, "wb")
        self._tar = None
        if output_format == "webdataset":
            self._tar = tarfile.TarFile(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)
        self._rows: list[tuple[str, dict[str, np.ndarray]]] = []  # parquet: the next row group
        self._parquet = None  # its writer, opened with the first row group
        self.written = 0
        self.failures: list[dict[str, Any]] = []
        self._started = time.perf_counter()

    def add(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        """The sample's `<key>.npz` (its row, for parquet)."""
        self.written += 1
        if self._tar is None:
            self._rows.append((key, arrays))
            if len(self._rows) >= PARQUET_ROWS_PER_GROUP:
                self._write_row_group()
            return
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        member = tarfile.TarInfo(f"{key}.npz")
        member.size, member.mtime, member.mode = buffer.tell(), int(time.time()), 0o644
        buffer.seek(0)
        self._tar.addfile(member, buffer)

    def fail(self, record: dict[str, Any]) -> None:
        self.failures.append(record)

    def finish(self, samples: int) -> dict[str, Any]:
        """The tar into place, then its stats (the done marker); returns the stats."""
        import fsspec

        if self._tar is not None:
            self._tar.close()
        else:
            self._write_row_group(final=True)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        stats = {
            "shard": self.shard.name,
            "input": self.shard.url,
            "format": self.output_format,
            "samples": samples,
            "written": self.written,
            "failed": len(self.failures),
            "failures": self.failures,
            "settings": self.settings,
            "run": self.run_id,
            "wall_seconds": round(time.perf_counter() - self._started, 3),
        }
        encoded = json.dumps(stats, indent=1, sort_keys=True).encode()
        stats_path = join(self.folder, done_marker(self.shard.name))
        if is_url(self.folder):
            filesystem, path = fsspec.core.url_to_fs(self.final)
            filesystem.put_file(self._temporary, path)
            os.unlink(self._temporary)
            filesystem.pipe_file(fsspec.core.url_to_fs(stats_path)[1], encoded)
        else:
            os.chmod(self._temporary, 0o644)
            os.replace(self._temporary, self.final)
            write_atomically(Path(stats_path), lambda file: file.write(encoded))
        return stats

    def _write_row_group(self, final: bool = False) -> None:
        """The rows held so far as one row group (memory stays bounded in large shards)."""
        if self._rows or (final and self._parquet is None):
            table = _parquet_table(self._rows)
            if self._parquet is None:
                import pyarrow.parquet as pq

                self._parquet = pq.ParquetWriter(self._file, table.schema)
            self._parquet.write_table(table)
            self._rows = []
        if final:
            self._parquet.close()

    def abandon(self) -> None:
        """Leave nothing: the shard is not done."""
        with contextlib.suppress(OSError, tarfile.TarError, AttributeError):
            self._tar.close()
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._temporary)


def _parquet_table(rows: list[tuple[str, dict[str, np.ndarray]]]) -> "Any":
    """A row per sample: `features` `(num_clips, D)` as a list of D-long lists."""
    import pyarrow as pa

    def nested(arrays: list[np.ndarray], width: int, dtype: np.dtype) -> "pa.Array":
        flat = np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.zeros(0, dtype)
        inner = pa.FixedSizeListArray.from_arrays(pa.array(flat.astype(dtype)), width)
        offsets = np.cumsum([0, *(len(a) for a in arrays)]).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), inner)

    features = [arrays["features"] for _, arrays in rows]
    dim = features[0].shape[1] if features else 1
    dtype = features[0].dtype if features else np.dtype(np.float32)
    return pa.table(
        {
            "key": pa.array([key for key, _ in rows], pa.string()),
            "features": nested(features, dim, dtype),
            "timestamps": nested([a["timestamps"] for _, a in rows], 2, np.dtype(np.float64)),
            "fps": pa.array([float(a["fps"]) for _, a in rows], pa.float64()),
            "clip_length": pa.array([float(a["clip_length"]) for _, a in rows], pa.float64()),
            "provenance": pa.array([str(a["provenance"]) for _, a in rows], pa.string()),
        }
    )


class ShardOutputs:
    """The run's output shards, per backbone: a sample goes in as it is settled; a shard is
    finished once its end record has come and each sample it started is settled for that
    backbone (a sample's last features may come after its shard's end record)."""

    def __init__(
        self,
        folders: dict[str, str],
        shards: list[Shard],
        settings: dict[str, dict[str, Any]],
        run_id: str,
        output_format: str = "webdataset",
        claims: Claims | None = None,
    ) -> None:
        self.folders, self.shards, self.settings, self.run_id = folders, shards, settings, run_id
        self.output_format = output_format
        self.claims = claims  # released as each output shard is finished or abandoned
        self._open: dict[tuple[str, int], ShardWriter] = {}
        self._pending: dict[tuple[str, int], set[int]] = {}
        self._ended: dict[int, ShardEnd] = {}
        self.finished: dict[str, int] = dict.fromkeys(folders, 0)
        self.elsewhere = 0  # shards left to another job sharing the folders
        self.errors: list[str] = []  # shards not read to their end, or not uploaded

    def _writer(self, name: str, shard: int) -> ShardWriter:
        key = (name, shard)
        if key not in self._open:
            self._open[key] = ShardWriter(
                self.folders[name],
                self.shards[shard],
                self.settings[name],
                self.run_id,
                self.output_format,
            )
        return self._open[key]

    def started(self, info: VideoStart) -> None:
        for name in info.models:
            self._pending.setdefault((name, info.shard), set()).add(info.index)

    def save(self, name: str, info: VideoStart, key: str, arrays: dict[str, np.ndarray]) -> None:
        self._writer(name, info.shard).add(key, arrays)
        self._settled(name, info.shard, info.index)

    def fail(self, name: str, shard: int, index: int, record: dict[str, Any]) -> None:
        self._writer(name, shard).fail(record)
        self._settled(name, shard, index)

    def end(self, end: ShardEnd) -> None:
        if end.elsewhere:
            self.elsewhere += 1
            return
        self._ended[end.shard] = end
        if end.error is not None:
            self.errors.append(f"{self.shards[end.shard].url}: not read to its end: {end.error}")
        for name in end.models:
            self._writer(name, end.shard)  # an empty shard still gets its (empty) output
            self._close_if_done(name, end.shard)

    def _settled(self, name: str, shard: int, index: int) -> None:
        self._pending.get((name, shard), set()).discard(index)
        self._close_if_done(name, shard)

    def _close_if_done(self, name: str, shard: int) -> None:
        end = self._ended.get(shard)
        if end is None or self._pending.get((name, shard)) or (name, shard) not in self._open:
            return
        writer = self._open.pop((name, shard))
        if end.error is not None:
            writer.abandon()  # not done: a rerun reads it again
        else:
            try:
                writer.finish(end.samples)
            except storage_errors() as error:
                if not is_url(writer.folder):
                    raise  # a local disk that fails stops the run
                writer.abandon()  # the upload failed: not done, a rerun writes it
                problem = f"{type(error).__name__}: {error}"
                self.errors.append(f"{writer.final}: not uploaded ({problem})")
            else:
                self.finished[name] += 1
        self._release(name, shard)

    def _release(self, name: str, shard: int) -> None:
        if self.claims is not None:
            self.claims.release(done_marker(self.shards[shard].name), (name,))

    @property
    def unfinished(self) -> int:
        """Output shards still open (their samples never all settled)."""
        return len(self._open)

    def abandon_all(self) -> None:
        for (name, shard), writer in self._open.items():
            writer.abandon()
            self._release(name, shard)
        self._open.clear()
