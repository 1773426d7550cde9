"""`vfe text --like FEATURES_DIR --queries FILE --output_dir DIR`: query text features made
with the model and weights a features folder was made with.

Writes `DIR/qid{qid}.npz` per query (`--prefix ''`: `{qid}.npz`, UniVTG's name), as
Moment-DETR's, QD-DETR's and UniVTG's loaders read them: `last_hidden_state` `(L, width)`
float32 (the text transformer's token states after its final LayerNorm, L = the query's tokens
with start and end), `pooler_output` `(D,)` float32 (`encode_text`, not L2-normalised) and
`provenance` (a JSON string).
"""

import argparse
import json
import sys
import zipfile
from collections import Counter
from collections.abc import Iterator
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np

from vfe.data.paths import feature_files
from vfe.destinations import is_url, path_inside, write_atomically
from vfe.errors import ExitCode, VfeError
from vfe.output.read_back import is_shard_folder, shard_samples
from vfe.planning.provenance import PROVENANCE_KEY, read_provenance

# What must agree across a folder's files, and between them and the weights loaded now.
MODEL_KEYS = ("model", "arch", "weights_sha256")


def folder_model(features_dir: "str | Path") -> dict[str, Any]:
    """The one backbone (`model`, `arch`, `weights_sha256`, `options`) the folder's .npz files
    record; an error when they record none or several."""
    found: dict[tuple[Any, ...], str] = {}
    record: dict[str, Any] = {}
    first = None
    for path, provenance in _provenances(features_dir):
        first = first or path
        if provenance is None:
            raise VfeError(f"--like: {path} records no provenance (made by an older vfe)")
        key = tuple(provenance.get(name) for name in MODEL_KEYS)
        found.setdefault(key, path)
        record = provenance
    if len(found) > 1:
        (first, first_path), (second, second_path) = list(found.items())[:2]
        raise VfeError(
            f"--like {str(features_dir)!r} mixes models: {first_path} was made with {first}, "
            f"{second_path} with {second}; point --like at one backbone's folder"
        )
    if "options" not in record:
        raise VfeError(
            f"--like: {first} does not record the backbone's options (made by a vfe before "
            "they were recorded); extract one video again into another folder and use that"
        )
    return {name: record[name] for name in (*MODEL_KEYS, "options")}


def _provenances(features_dir: "str | Path") -> Iterator[tuple[str, dict[str, Any] | None]]:
    """(where, provenance) of each feature file, or each sample of a folder of output shards,
    local or at a URL (`vfe.output.read_back`)."""
    if is_shard_folder(features_dir):
        for _, where, arrays in shard_samples(features_dir):
            yield where, json.loads(str(arrays[PROVENANCE_KEY]))
        return
    if is_url(str(features_dir)):
        raise VfeError(f"--like {features_dir} holds no finished output shards (*.stats.json)")
    features_dir = Path(features_dir)
    files = feature_files(features_dir)
    if not files:
        raise VfeError(f"--like {str(features_dir)!r} holds no .npz feature files")
    for path in files:
        try:
            yield str(path), read_provenance(path)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise VfeError(f"--like: {path} cannot be read ({error})") from error


def build_text_tower(model: dict[str, Any], folder: str = "--like") -> Any:
    """The backbone the folder was made with, rebuilt from its options, and its text tower;
    refused unless the weights loaded now are those the folder records. `folder` names the
    features folder in messages as the command took it."""
    if model["weights_sha256"] == "random" or model["options"].get("weights") == "random":
        raise VfeError(
            f"{folder}: those features were made with random weights; there is no text encoder "
            "that matches them (extract with real weights to search or query them)"
        )
    module_name, class_name = model["model"].rsplit(".", 1)
    backbone = getattr(import_module(module_name), class_name)(**model["options"])
    tower = backbone.text_tower()
    loaded = backbone.weights_record()["weights_sha256"]
    if loaded != model["weights_sha256"]:
        raise VfeError(
            f"the weights loaded now (sha256 {loaded}) are not those the features were made with "
            f"({model['weights_sha256']}); put the original weights back where the options "
            f"{model['options']} find them"
        )
    return tower


def read_queries(path: Path) -> list[tuple[str, str]]:
    """`(qid, query)` pairs: jsonl with `qid` and `query`, or one query per line (qid = its
    0-based line number)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise VfeError(f"--queries {str(path)!r} cannot be read ({error})") from error
    queries: list[tuple[str, str]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as error:
                raise VfeError(f"--queries {path}:{number} is not JSON ({error})") from error
            if "qid" not in entry or not isinstance(entry.get("query"), str):
                raise VfeError(
                    f"--queries {path}:{number} needs a 'qid' and a 'query' string, got "
                    f"keys {sorted(entry)}"
                )
            queries.append((str(entry["qid"]), entry["query"]))
        else:
            queries.append((str(number - 1), line.strip()))
    counts = Counter(qid for qid, _ in queries)
    duplicated = sorted(qid for qid, count in counts.items() if count > 1)
    if duplicated:
        raise VfeError(f"--queries {str(path)!r} repeats qid {', '.join(duplicated[:5])}")
    if not queries:
        raise VfeError(f"--queries {str(path)!r} holds no queries")
    return queries


def write_query_file(
    path: Path, states: np.ndarray, pooled: np.ndarray, provenance: dict[str, Any]
) -> None:
    """Written whole under a temporary created exclusively, then renamed: never half a file."""
    arrays = {
        "last_hidden_state": states,
        "pooler_output": pooled,
        PROVENANCE_KEY: np.array(json.dumps(provenance)),
    }
    write_atomically(path, lambda file: np.savez(file, **arrays))


def run(args: argparse.Namespace) -> int:
    queries = read_queries(Path(args.queries))
    output_dir = Path(args.output_dir)
    # qids come from the data: every file name is checked before anything is written.
    targets = {
        qid: path_inside(output_dir, qid, "qid", folders=False, prefix=args.prefix, suffix=".npz")
        for qid, _ in queries
    }
    model = folder_model(args.like)
    tower = build_text_tower(model)
    output_dir.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(queries), args.batch_size):
        batch = queries[start : start + args.batch_size]
        token_states, pooled = tower.encode([query for _, query in batch])
        for (qid, query), states, embedding in zip(batch, token_states, pooled, strict=True):
            provenance = {**model, "query": query, "qid": qid}
            write_query_file(
                targets[qid],
                states.numpy(),
                embedding.numpy(),
                provenance,
            )
    print(f"vfe text: {len(queries)} queries -> {output_dir}", file=sys.stderr)
    return ExitCode.OK


# The docstring's first paragraph, whole (its first line stops mid-sentence).
DESCRIPTION = " ".join(__doc__.split("\n\n")[0].split())


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="vfe text", description=" ".join(__doc__.split("\n\n")[0].split())
    )
    parser.add_argument("--like", required=True, help="a features folder made by vfe predict")
    parser.add_argument(
        "--queries", required=True, help="jsonl with qid and query, or one query per line"
    )
    parser.add_argument(
        "--output_dir", required=True, help="folder for the qid{qid}.npz files (made if missing)"
    )
    parser.add_argument("--batch_size", type=int, default=256, help="queries per forward pass")
    parser.add_argument(
        "--prefix",
        default="qid",
        help="file names are PREFIX{qid}.npz: 'qid' (Moment-DETR, QD-DETR) or '' (UniVTG)",
    )
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch_size must be a positive integer, got {args.batch_size}")
    try:
        sys.exit(run(args))
    except VfeError as error:
        print(f"vfe text: error: {error}", file=sys.stderr)
        sys.exit(ExitCode.USAGE)
