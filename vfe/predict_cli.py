"""`vfe predict ...`: LightningCLI with the seed's plain flags and short model names (imported only
for `predict`: torch and Lightning take seconds to import)."""

import contextlib
import io
import itertools
import logging
import multiprocessing
import re
import signal
import sys
import traceback
import warnings
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any, Literal

import torch
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from vfe.argv import rewrite_model_names, wants_verbose
from vfe.backbones.base import Extractor
from vfe.backbones.registry import MODELS
from vfe.data.datamodule import VideoDataModule
from vfe.errors import ExitCode, VfeError
from vfe.messages import mark_command_start
from vfe.option_errors import OneLineErrors
from vfe.output.run_totals import RankLost
from vfe.output.writer import FeatureWriter
from vfe.stopping import STOP_REQUEST, STOP_SIGNALS, StoppedBySignal

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Flag:
    """One of vfe's own `predict` options (also listed first by `vfe predict --help`)."""

    name: str
    help: str
    options: dict[str, Any]


PLAIN_FLAG = {"nargs": "?", "const": True}  # `--overwrite` alone means true
VFE_FLAGS = (
    Flag(
        "--input_dir",
        "folder of videos, searched recursively (or an fsspec URL: s3://bucket/videos)",
        {"type": str, "default": "raw_videos"},
    ),
    Flag(
        "--input_list",
        "a list of videos instead: .txt (a path per line, optionally TAB id) or .csv (path, id)",
        {"type": Path | None, "default": None},
    ),
    Flag(
        "--input_shards",
        "webdataset tar shards instead (video2dataset's layout), a path or fsspec URL with "
        "brace ranges: 's3://bucket/videos/{00000..00999}.tar'",
        {"type": str | None, "default": None},
    ),
    Flag(
        "--shard_video_ext",
        "a shard sample's video is its member with this extension (default: its first video)",
        {"type": str | None, "default": None},
    ),
    Flag(
        "--output_dir",
        "where the .npz files go (default: features/<model>/); for shards also an fsspec URL",
        {"type": str | None, "default": None},
    ),
    Flag(
        "--output_format",
        "npz (a file per video; default for files); for --input_shards webdataset (default: "
        "<shard>.tar, then <shard>.stats.json) or parquet (<shard>.parquet, a row per video)",
        {"type": str | None, "default": None},
    ),
    Flag(
        "--layout",
        "tree: outputs mirror the input folders; flat: <output_dir>/<file name or id>.npz",
        {"type": str, "default": "tree"},
    ),
    Flag(
        "--output_dtype",
        "float32 (default) or float16: the dtype features are saved in (HERO's files: float16)",
        {"type": str, "default": "float32"},
    ),
    Flag("--clip_len", "clip length in seconds (default 2)", {"type": float, "default": 2.0}),
    Flag(
        "--clip_stride",
        "seconds from one clip's start to the next, dividing clip_len (overlapping clips); "
        "default clip_len",
        {"type": float | None, "default": None},
    ),
    Flag(
        "--batch_size",
        "samples per forward pass: frames (CLIP) or clips (SlowFast); default the backbone's",
        {"type": int | None, "default": None},
    ),
    Flag("--device", "where the model runs: auto, cpu or cuda", {"type": str, "default": "auto"}),
    Flag(
        "--part",
        "I/N: this job extracts part I (from 0) of N of the videos, the same cut for every job "
        "(SLURM array tasks: set from SLURM_ARRAY_TASK_ID/_MIN/_COUNT when unset; 'all': every "
        "video)",
        {"type": str | None, "default": None},
    ),
    Flag(
        "--overwrite",
        "redo every video whose .npz exists; 'changed': redo only those whose .npz no longer "
        "matches (other settings, or a changed video), keeping the rest",
        {"type": bool | Literal["changed"], "default": False, **PLAIN_FLAG},
    ),
    Flag(
        "--verbose",
        "also show Lightning's and the libraries' own messages",
        {"type": bool, "default": False, **PLAIN_FLAG},
    ),
)


def predict_help_intro() -> str:
    """vfe's own options and the backbones, printed before Lightning's full option list."""
    lines = [
        "usage: vfe predict --model NAME [options]   (python -m vfe predict ...)",
        "",
        "Per-clip features of every video under --input_dir, one .npz per video.",
        "",
        "backbones (--model NAME; several from one decode: --model clip,slowfast):",
    ]
    for name, class_path in MODELS.items():
        lines.append(f"  {name:<13} {backbone_summary(class_path)}")
    lines += [
        "  (--model.help NAME lists a backbone's options: --model.arch, --model.weights, ...;",
        "   with several backbones: --model.NAME.OPTION)",
        "",
        "vfe's options:",
    ]
    width = max(len(flag.name) for flag in VFE_FLAGS) + 2
    for flag in VFE_FLAGS:
        lines.append(f"  {flag.name:<{width}}{flag.help}")
    lines += [
        "  --data.*      decoding: --data.num_workers, --data.decoder, --data.decode_threads, ...",
        "  --writer.*    --writer.rank_timeout_seconds: how long rank 0 waits for a silent rank",
        "  --trainer.*   Lightning's Trainer: --trainer.devices, --trainer.strategy ddp, "
        "--trainer.precision bf16-mixed, ...",
        "  --config FILE a yaml config (configs/*.yaml); --print_config prints a complete one",
        "",
        "Weights: --model.weights FILE (not --ckpt_path, which resumes Lightning training).",
        "Exit status: 0 done, 1 some video failed, 2 usage error, 3 a rank was lost, 4 crash, "
        "128+N stopped by signal N.",
        "",
        "Every option, Lightning's Trainer options included: vfe predict --help all",
    ]
    return "\n".join(lines)


def print_predict_help(args: list[str] | None) -> None:
    """vfe's page; with `--help all`, then the parser's full help with Lightning's description
    of `predict` (cut at "Useful to:") replaced by a header of vfe's."""
    argv = sys.argv[1:] if args is None else list(args)
    print(predict_help_intro())
    if not any(a == "all" and b in ("-h", "--help") for b, a in itertools.pairwise(argv)):
        return
    without_all = [arg for arg in argv if arg != "all"]
    saved_argv = sys.argv
    if args is None:  # the parser reads sys.argv (given both, Lightning warns)
        sys.argv = [sys.argv[0], *without_all]
    page = io.StringIO()
    try:
        with contextlib.redirect_stdout(page), contextlib.suppress(SystemExit):
            quiet_libraries()
            _predict(None if args is None else without_all)
    finally:
        sys.argv = saved_argv
    text = re.sub(
        r"Run inference on your data\..*?Useful to:",
        "Lightning's predict options:",
        page.getvalue(),
        flags=re.S,
    )
    print("\n" + text, end="")


def backbone_summary(class_path: str) -> str:
    """The first sentence of a backbone class's docstring (which may run over several lines)."""
    module_name, class_name = class_path.rsplit(".", 1)
    backbone = getattr(import_module(module_name), class_name)
    paragraph = " ".join((backbone.__doc__ or "").strip().split("\n\n")[0].split())
    sentence, period, _ = paragraph.partition(". ")
    return sentence + "." if period else paragraph


class VfeCLI(LightningCLI):
    """Only `predict`; `--input_dir` and friends are plain flags linked into the datamodule."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {"predict": {"model", "dataloaders", "datamodule"}}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for flag in VFE_FLAGS:
            parser.add_argument(flag.name, help=flag.help, **flag.options)
        for source, target in (
            ("input_dir", "data.input_dir"),
            ("input_list", "data.input_list"),
            ("layout", "data.layout"),
            ("output_dir", "data.output_dir"),
            ("input_shards", "data.input_shards"),
            ("shard_video_ext", "data.shard_video_ext"),
            ("output_format", "data.output_format"),
            ("clip_len", "data.clip_len"),
            ("clip_stride", "data.clip_stride"),
            ("batch_size", "data.batch_size"),
            ("overwrite", "data.overwrite"),
            ("part", "data.part"),
            ("output_dtype", "data.output_dtype"),
        ):
            parser.link_arguments(source, target)
        parser.add_lightning_class_args(FeatureWriter, "writer")
        parser.link_arguments("output_dir", "writer.output_dir")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        if config.get("ckpt_path") is not None:
            raise VfeError(
                f"--ckpt_path {config.ckpt_path} is Lightning's option to resume training; vfe "
                "loads a backbone's weights with --model.weights FILE (--model.NAME.weights FILE "
                "with several backbones)"
            )
        device = config.device
        check_device(device)
        if device != "auto":
            config.trainer.accelerator = device
        warn_if_bf16_is_emulated(str(config.trainer.precision), device)
        if config.trainer.enable_progress_bar is not False:
            callbacks = config.trainer.callbacks or []
            if not any("ProgressBar" in str(cb.get("class_path", "")) for cb in callbacks):
                callbacks.append(Namespace(class_path="vfe.output.progress.VideoProgressBar"))
            config.trainer.callbacks = callbacks
        if config.get("return_predictions") is None:
            # FeatureWriter writes features as they come; keeping them would grow memory.
            config.return_predictions = False


def check_device(device: str, option: str = "--device") -> None:
    """`device` is one of DEVICES, and a GPU is there if it asks for one (never a silent CPU
    run); `option` is how the user gave it (`--device`, or the API's `device=`)."""

    def spelled(value: str) -> str:  # as the user would write it
        return f"{option}{value!r}" if option.endswith("=") else f"{option} {value}"

    if device not in DEVICES:
        raise VfeError(
            f"{option.removesuffix('=')} {device!r} is not allowed; choose one of "
            f"{', '.join(DEVICES)}"
        )
    if device == "cuda" and not torch.cuda.is_available():
        raise VfeError(
            f"{spelled('cuda')} was asked for, but PyTorch sees no CUDA GPU here; use "
            f"{spelled('cpu')} (or auto)"
        )


def warn_if_bf16_is_emulated(precision: str, device: str) -> None:
    """bf16 on a CPU without native bf16 (AVX512-BF16 / AMX) is emulated: many times slower."""
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if "bf16" in precision and on_cpu and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        print(
            f"vfe: warning: this CPU has no native bf16, so --trainer.precision {precision} is "
            "emulated and runs several times slower than fp32; use --trainer.precision 32-true",
            file=sys.stderr,
        )


def quiet_libraries() -> None:
    """Hide what users cannot act on: Lightning's device and tip lines, upstream deprecations."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r"`torch\.jit\..*` is deprecated")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")


def main(args: list[str] | None = None) -> None:
    """Run `vfe predict` (`args` start with "predict"; None: `sys.argv[1:]`); the exit status
    says how it ended (`vfe.errors.ExitCode`)."""
    argv = sys.argv[1:] if args is None else args
    if any(arg in ("-h", "--help") for arg in argv):
        print_predict_help(args)
        return
    # Expected for an IterableDataset (the writer does not need batch indices) and an upstream
    # deprecation inside Lightning: neither is actionable for a user.
    warnings.filterwarnings("ignore", message="Couldn't infer the batch indices")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)")
    if not wants_verbose(argv):
        quiet_libraries()
    mark_command_start()
    previous_handlers = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    STOP_REQUEST.reset()
    STOP_REQUEST.install()  # Ctrl-C stops after the batch in hand from here on
    try:
        exit_code = _predict(args)
    except VfeError as error:
        print(f"vfe: error: {error}", file=sys.stderr)
        exit_code = ExitCode.USAGE
    except StoppedBySignal as stop:
        end_progress_lines()
        print(f"vfe: {stop}", file=sys.stderr)
        exit_code = stop.exit_code
    except RankLost as lost:
        print(f"vfe: error: {lost}", file=sys.stderr)
        exit_code = ExitCode.RANK_LOST
    except Exception:  # a bug or a resource error: its traceback, and an exit status of its own
        traceback.print_exc()
        exit_code = ExitCode.CRASHED
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
        # DataLoader workers ignore stop signals (the main process stops them); one left alive
        # after a failure would make the interpreter's exit wait for it for ever.
        for child in multiprocessing.active_children():
            child.kill()
    if exit_code == ExitCode.USAGE:
        # A usage error raised on every rank (a bad list) left the process group to the
        # interpreter's exit, where gloo's threads could abort the process (exit 134, "terminate
        # called without an active exception") instead of exiting 2: end it here.
        end_process_group()
    if exit_code != ExitCode.OK:
        sys.exit(exit_code)


def end_progress_lines() -> None:
    """Close the progress bars still drawn, so the next message starts on a line of its own
    (a stop leaves Lightning's bar open at the end of its line)."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def end_process_group() -> None:
    """Destroy the default process group if this process is in one (a local step)."""
    distributed = torch.distributed
    if distributed.is_available() and distributed.is_initialized():
        with contextlib.suppress(RuntimeError, ValueError):
            distributed.destroy_process_group()


def _predict(args: list[str] | None) -> int:
    """Run `vfe predict`; the exit status for its outcome."""
    if args is None:
        # Rewritten in place so DDP's launcher, which re-runs sys.argv, sees class paths.
        sys.argv[1:] = rewrite_model_names(sys.argv[1:])
    cli = VfeCLI(
        model_class=Extractor,
        subclass_mode_model=True,
        datamodule_class=VideoDataModule,
        save_config_callback=None,
        trainer_defaults={"logger": False, "enable_model_summary": False},
        seed_everything_default=False,  # inference: nothing random to seed
        parser_kwargs={
            "prog": "vfe",
            "predict": {"description": "Per-clip features of every video, one .npz per video."},
        },
        auto_configure_optimizers=False,
        parser_class=OneLineErrors,
        args=None if args is None else rewrite_model_names(args),
    )
    writers = [cb for cb in cli.trainer.callbacks if isinstance(cb, FeatureWriter)]
    if any(writer.total_failed for writer in writers):
        return ExitCode.VIDEOS_FAILED
    return ExitCode.OK
