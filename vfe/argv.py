"""What users type -> what LightningCLI parses: short model names (`--model clip`), several
models (`--model clip,slowfast`, or a list in yaml) and their per-backbone flags
(`--model.clip.weights FILE`, with a yaml config too), and `--verbose` read early."""

import json
from pathlib import Path
from typing import Any

import yaml

from vfe.backbones.registry import resolve_model

NAME_OPTIONS = ("--model", "--model.help")
MULTI_BACKBONE = "vfe.backbones.multi.MultiBackbone"


def _multi_model_config(names: list[str], options: dict | None = None) -> dict:
    init_args: dict = {"models": names}
    if options:
        init_args["options"] = options
    return {"class_path": MULTI_BACKBONE, "init_args": init_args}


def _take_backbone_flags(
    args: list[str], names: list[str]
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Remove each `--model.<name>.<option> VALUE` (a name in `names`) from `args`; the rest of
    the arguments and those options by backbone name."""
    remaining: list[str] = []
    options: dict[str, dict[str, Any]] = {}
    position = 0
    while position < len(args):
        arg = args[position]
        key, has_value, value = arg.partition("=")
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "--model" and parts[1] in names:
            if not has_value:
                position += 1
                value = args[position] if position < len(args) else ""
            options.setdefault(parts[1], {})[parts[2]] = yaml.safe_load(value)
        else:
            remaining.append(arg)
        position += 1
    return remaining, options


def rewrite_several_models(args: list[str]) -> list[str]:
    """`--model clip,slowfast` -> the MultiBackbone with those models, and each
    `--model.<name>.<option> VALUE` -> its entry in `--model.options`."""
    names = None
    for position, arg in enumerate(args):
        key, has_value, value = arg.partition("=")
        if key == "--model":
            raw = value if has_value else (args[position + 1] if position + 1 < len(args) else "")
            if "," in raw:
                names = [name.strip() for name in raw.split(",") if name.strip()]
    if names is None:
        return list(args)
    remaining, options = _take_backbone_flags(args, names)
    rewritten: list[str] = []
    position = 0
    while position < len(remaining):
        arg = remaining[position]
        key, has_value, _ = arg.partition("=")
        if key == "--model":
            rewritten += [f"--model={MULTI_BACKBONE}", f"--model.models={json.dumps(names)}"]
            position += 1 if has_value else 2
        else:
            rewritten.append(arg)
            position += 1
    if options:
        rewritten.append(f"--model.options={json.dumps(options)}")
    return rewritten


def _config_model(config_text: str) -> dict | None:
    """The `model` of a yaml config as a class-path dict (short names resolved; several
    models as the MultiBackbone); None when the config names no model."""
    config = yaml.safe_load(config_text)
    if not isinstance(config, dict) or "model" not in config:
        return None
    model = config["model"]
    if isinstance(model, str) and "," in model:
        model = [name.strip() for name in model.split(",")]
    if isinstance(model, list):  # `model: [clip, slowfast]`
        return _multi_model_config([str(name) for name in model])
    if isinstance(model, dict) and model and "class_path" not in model:
        # `model: {clip: {arch: ViT-B/16}, slowfast: {batch_size: 4}}`
        options = {name: value for name, value in model.items() if value}
        return _multi_model_config(list(model), options)
    if isinstance(model, str):
        return {"class_path": resolve_model(model)}
    if isinstance(model, dict) and isinstance(model.get("class_path"), str):
        return {**model, "class_path": resolve_model(model["class_path"])}
    return None


def _resolve_config_model(config_text: str, args: list[str]) -> tuple[str | None, list[str]]:
    """A yaml config whose `model` needs rewriting to class paths (None if it needs none), and
    `args` (those after the config) less the per-backbone flags (`--model.<name>.<option>`)
    merged into it when the config names several backbones."""
    config = yaml.safe_load(config_text)
    model = _config_model(config_text)
    if model is None:
        return None, args
    if model.get("class_path") == MULTI_BACKBONE:
        init_args = model.setdefault("init_args", {})
        args, flags = _take_backbone_flags(args, [str(n) for n in init_args.get("models", [])])
        options = dict(init_args.get("options") or {})
        for name, values in flags.items():
            options[name] = {**(options.get(name) or {}), **values}
        if options:
            init_args["options"] = options
    if model == config["model"]:
        return None, args
    config["model"] = model
    return yaml.safe_dump(config, sort_keys=False), args


def rewrite_model_names(args: list[str]) -> list[str]:
    """Short model names -> registered class paths, wherever users type them.

    `--model clip` / `--model=clip` / `--model.help clip`, a `model: clip` inside a `--config`
    file, and `--model` given after `--model.*` options (the parser needs the class first).
    """
    rewritten = rewrite_several_models(args)
    configs = [
        position + 1
        for position, arg in enumerate(rewritten)
        if arg == "--config" and position + 1 < len(rewritten)
    ]
    for position in reversed(configs):  # later configs first: positions stay valid
        config_path = Path(rewritten[position])
        if config_path.is_file():
            # Per-backbone flags are merged into a config that names several backbones.
            resolved, rest = _resolve_config_model(
                config_path.read_text(), rewritten[position + 1 :]
            )
            if resolved is not None:  # jsonargparse takes yaml text in place of a path
                rewritten = [*rewritten[:position], resolved, *rest]
    for position, arg in enumerate(rewritten):
        name, has_value, value = arg.partition("=")
        if name in NAME_OPTIONS and has_value:
            rewritten[position] = f"{name}={resolve_model(value)}"
        elif arg in NAME_OPTIONS and position + 1 < len(rewritten):
            rewritten[position + 1] = resolve_model(rewritten[position + 1])
    # The class must come before its options: move `--model X` in front of the first
    # `--model.*` that precedes it.
    for position, arg in enumerate(rewritten):
        if arg == "--model" or arg.startswith("--model="):
            size = 2 if arg == "--model" else 1
            first_option = next(
                (i for i, a in enumerate(rewritten[:position]) if a.startswith("--model.")), None
            )
            if first_option is not None:
                moved = rewritten[position : position + size]
                del rewritten[position : position + size]
                rewritten[first_option:first_option] = moved
            break
    return rewritten


def wants_verbose(argv: list[str]) -> bool:
    """`--verbose`, `--verbose true` or `--verbose=true` (read before the parser runs, so that
    Lightning's own setup messages are already hidden)."""
    for position, arg in enumerate(argv):
        if arg.startswith("--verbose="):
            return arg.split("=", 1)[1].lower() == "true"
        if arg == "--verbose":
            following = argv[position + 1].lower() if position + 1 < len(argv) else ""
            return following != "false"
    return False
