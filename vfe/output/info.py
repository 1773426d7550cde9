"""`vfe info FILE_OR_DIR`: how feature files were made (their provenance), and what failed;
for a folder of output shards, their stats.

A folder written by several backbones in one run (`<output_dir>/<name>/`) is reported per
backbone folder, each with its own settings and failures.
"""

import argparse
import json
import sys
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from vfe.data.paths import feature_files
from vfe.destinations import is_url
from vfe.errors import VfeError
from vfe.output.failures import FAILURES_FILE_NAME, read_failures
from vfe.output.read_back import shard_stats
from vfe.planning.provenance import DETERMINING_SETTINGS, PROVENANCE_KEY, SETTINGS_BEFORE_RECORDED

MAX_LISTED = 10


def describe_file(path: Path) -> dict[str, Any]:
    """Shape, grid and provenance of one .npz."""
    with np.load(path) as saved:
        features = saved["features"]
        report: dict[str, Any] = {
            "file": str(path),
            "features": {"shape": list(features.shape), "dtype": str(features.dtype)},
            "num_clips": int(features.shape[0]),
            "fps": float(saved["fps"]) if "fps" in saved.files else None,
            "clip_length": float(saved["clip_length"]) if "clip_length" in saved.files else None,
        }
        provenance = None
        if PROVENANCE_KEY in saved.files:
            provenance = json.loads(str(saved[PROVENANCE_KEY]))
    report["provenance"] = provenance
    return report


def backbone_folders(folder: Path) -> list[Path]:
    """The sub-folders a run of several backbones wrote (`<folder>/<name>/`): immediate
    sub-folders whose files record different backbones (a single backbone's sub-folders are
    just the dataset's own), and, beside them, sub-folders with only a failure log."""
    models: dict[Path, str] = {}
    only_failures = []
    for part in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        first = next(part.rglob("*.npz"), None)
        if first is None:
            if (part / FAILURES_FILE_NAME).exists():
                only_failures.append(part)
            continue
        try:
            provenance = describe_file(first)["provenance"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            continue
        if provenance is not None:
            models[part] = provenance.get("model", "")
    if len(set(models.values())) < 2:
        return []
    return sorted([*models, *only_failures])


def describe(folder: Path) -> dict[str, Any]:
    """`describe_folder`, or, for the root of a run of several backbones, one report per
    backbone folder (and one for any files outside them)."""
    parts = backbone_folders(folder)
    if not parts:
        return describe_folder(folder)
    rest = describe_folder(folder, excluded=parts)
    reports = {part.name: describe_folder(part) for part in parts}
    if rest["files"] or rest["failed_videos"] or rest["unreadable_failure_lines"]:
        reports["(other files)"] = rest
    return {"folder": str(folder), "backbones": reports}


def describe_folder(folder: Path, excluded: list[Path] = ()) -> dict[str, Any]:
    """Counts, feature shapes, the settings found (each value with how many files record it)
    and failures; sub-folders in `excluded` are left out."""
    shapes: Counter[str] = Counter()
    settings: dict[str, Counter[str]] = {key: Counter() for key in DETERMINING_SETTINGS}
    without_provenance, unreadable = [], []
    files = [
        path
        for path in feature_files(folder)
        if not any(path.is_relative_to(part) for part in excluded)
    ]
    for path in files:
        try:
            report = describe_file(path)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            unreadable.append(f"{path.relative_to(folder)}: {error}")
            continue
        shapes[json.dumps(report["features"]["shape"])] += 1
        provenance = report["provenance"]
        if provenance is None:
            without_provenance.append(str(path.relative_to(folder)))
            continue
        provenance = {**SETTINGS_BEFORE_RECORDED, **provenance}  # older files: the defaults
        for key in DETERMINING_SETTINGS:
            settings[key][json.dumps(provenance.get(key), sort_keys=True)] += 1
    failure_log = read_failures(folder / FAILURES_FILE_NAME)
    failures = [
        record
        for record in failure_log.records
        if "relative_path" in record
        and not (folder / record["relative_path"]).with_suffix(".npz").exists()
    ]
    latest = {record["relative_path"]: record for record in failures}  # last attempt wins
    return {
        "folder": str(folder),
        "files": len(files),
        "feature_shapes": dict(shapes),
        "settings": {
            key: [{"value": json.loads(value), "files": n} for value, n in counts.items()]
            for key, counts in settings.items()
            if counts
        },
        "without_provenance": without_provenance,
        "unreadable": unreadable,
        "failed_videos": list(latest.values()),
        "unreadable_failure_lines": failure_log.num_unreadable,
    }


def format_file(report: dict[str, Any]) -> str:
    lines = [
        f"{report['file']}: {report['num_clips']} clips, features {report['features']['shape']} "
        f"{report['features']['dtype']}, fps {report['fps']}, clip_length {report['clip_length']}"
    ]
    provenance = report["provenance"]
    if provenance is None:
        lines.append("  no provenance (made by an earlier vfe)")
        return "\n".join(lines)
    for key, value in provenance.items():
        shown = json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value
        lines.append(f"  {key}: {shown}")
    return "\n".join(lines)


def format_report(report: dict[str, Any]) -> str:
    """A folder's report as text; one section per backbone for a run of several."""
    if "backbones" not in report:
        return format_folder(report)
    sections = [f"{report['folder']}: {len(report['backbones'])} backbone folders"]
    sections += [format_folder(part) for part in report["backbones"].values()]
    return "\n".join(sections)


def format_folder(report: dict[str, Any]) -> str:
    lines = [f"{report['folder']}: {report['files']} feature files"]
    for shape, count in report["feature_shapes"].items():
        lines.append(f"  features {shape}: {count} files")
    for key, values in report["settings"].items():
        shown = [(json.dumps(v["value"], sort_keys=True), v["files"]) for v in values]
        if len(shown) == 1:
            lines.append(f"  {key}: {shown[0][0]} (all files with provenance)")
        else:
            lines.append(f"  {key}: MIXED " + ", ".join(f"{v} ({n})" for v, n in shown))
    for title, items in (
        ("without provenance", report["without_provenance"]),
        ("unreadable", report["unreadable"]),
    ):
        if items:
            lines.append(f"  {len(items)} {title}: " + ", ".join(items[:MAX_LISTED]))
    failed = report["failed_videos"]
    lines.append(f"  {len(failed)} failed video(s) without features")
    lines += [
        f"    {r['relative_path']}: {r.get('stage', '?')}: {r.get('error', '?')}"
        for r in failed[:MAX_LISTED]
    ]
    if report["unreadable_failure_lines"]:
        lines.append(
            f"  {report['unreadable_failure_lines']} unreadable line(s) in {FAILURES_FILE_NAME} "
            "(cut off by a killed process?)"
        )
    return "\n".join(lines)


def describe_shards(folder: "str | Path") -> dict[str, Any] | None:
    """A folder of output shards (`vfe.output.shard_sink`), local or at an fsspec URL, from
    their stats; None if it holds none."""
    found = shard_stats(folder)
    if not found:
        return None
    shards = [stats for _, stats in found]
    settings = Counter(json.dumps(stats.get("settings"), sort_keys=True) for stats in shards)
    return {
        "folder": str(folder),
        "shards": len(shards),
        "formats": dict(Counter(stats.get("format") for stats in shards)),
        "samples": sum(stats["samples"] for stats in shards),
        "written": sum(stats["written"] for stats in shards),
        "failed": [
            {"shard": stats["shard"], **failure}
            for stats in shards
            for failure in stats.get("failures", [])
        ],
        "settings": [
            {"value": json.loads(value), "shards": count} for value, count in settings.items()
        ],
    }


def format_shards(report: dict[str, Any]) -> str:
    formats = ", ".join(f"{name} ({count})" for name, count in report["formats"].items())
    lines = [
        f"{report['folder']}: {report['shards']} finished shards ({formats}), "
        f"{report['samples']} samples, {report['written']} written"
    ]
    if len(report["settings"]) > 1:
        lines.append(f"  settings: MIXED over {len(report['settings'])} groups of shards")
    else:
        for key, value in (report["settings"][0]["value"] or {}).items():
            lines.append(f"  {key}: {json.dumps(value, sort_keys=True)}")
    failed = report["failed"]
    lines.append(f"  {len(failed)} failed sample(s)")
    lines += [
        f"    {r['shard']}/{r['relative_path']}: {r.get('stage', '?')}: {r.get('error', '?')}"
        for r in failed[:MAX_LISTED]
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="vfe info", description=__doc__.splitlines()[0])
    parser.add_argument(
        "path", help="a .npz feature file, an output folder, or a folder of output shards at a URL"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)
    remote = is_url(args.path)
    path = args.path if remote else Path(args.path)
    try:  # a folder of output shards, local or at a URL (a corrupt stats file: one line)
        shards = describe_shards(path) if remote or path.is_dir() else None
    except VfeError as error:
        print(f"vfe info: error: {error}", file=sys.stderr)
        sys.exit(2)
    if remote and shards is None:
        print(
            f"vfe info: error: {path} holds no finished output shards (*.stats.json); "
            "folders of feature files are read locally",
            file=sys.stderr,
        )
        sys.exit(2)
    args.path = path
    if shards is not None:
        report, text = shards, format_shards
    elif args.path.is_dir():
        report, text = describe(args.path), format_report
    elif args.path.is_file():
        try:
            report, text = describe_file(args.path), format_file
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            print(
                f"vfe info: error: {args.path} is not a vfe feature file: {error}", file=sys.stderr
            )
            sys.exit(2)
    else:
        print(f"vfe info: error: {str(args.path)!r} does not exist", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(report, indent=2, sort_keys=True) if args.json else text(report))
