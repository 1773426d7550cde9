"""`vfe predict ...`: LightningCLI with the seed's plain flags and short model names."""

import sys
import warnings
from pathlib import Path

import torch
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from vfe.backbones.base import Backbone
from vfe.data import VideoDataModule
from vfe.errors import VfeError
from vfe.registry import resolve_model
from vfe.writer import FeatureWriter

DEVICES = ("auto", "cpu", "cuda")


class VfeCLI(LightningCLI):
    """Only `predict`; `--input_dir` and friends are plain flags linked into the datamodule."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {"predict": {"model", "dataloaders", "datamodule"}}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--input_dir",
            type=Path,
            default=Path("raw_videos"),
            help="folder of videos, searched recursively",
        )
        parser.add_argument(
            "--output_dir",
            type=Path | None,
            default=None,
            help="where the .npz files go (default: features/<model>/)",
        )
        parser.add_argument("--clip_len", type=float, default=2.0, help="clip length in seconds")
        parser.add_argument(
            "--batch_size",
            type=int | None,
            default=None,
            help="frames (CLIP) or clips (SlowFast) per forward pass",
        )
        parser.add_argument(
            "--device", type=str, default="auto", help="where the model runs: auto, cpu or cuda"
        )
        parser.add_argument(
            "--overwrite", type=bool, default=False, help="redo videos whose .npz already exists"
        )
        for source, target in (
            ("input_dir", "data.input_dir"),
            ("output_dir", "data.output_dir"),
            ("clip_len", "data.clip_len"),
            ("batch_size", "data.batch_size"),
            ("overwrite", "data.overwrite"),
        ):
            parser.link_arguments(source, target)
        parser.add_lightning_class_args(FeatureWriter, "writer")
        parser.link_arguments("output_dir", "writer.output_dir")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        device = config.device
        if device not in DEVICES:
            raise VfeError(
                f"--device {device!r} is not allowed; choose one of {', '.join(DEVICES)}"
            )
        if device == "cuda" and not torch.cuda.is_available():
            raise VfeError(
                "--device cuda was asked for, but PyTorch sees no CUDA GPU here; "
                "use --device cpu (or auto)"
            )
        if device != "auto":
            config.trainer.accelerator = device
        if config.trainer.enable_progress_bar is not False:
            callbacks = config.trainer.callbacks or []
            if not any("ProgressBar" in str(cb.get("class_path", "")) for cb in callbacks):
                callbacks.append(Namespace(class_path="vfe.progress.VideoProgressBar"))
            config.trainer.callbacks = callbacks
        if config.get("return_predictions") is None:
            # FeatureWriter writes features as they come; keeping them would grow memory.
            config.return_predictions = False


def rewrite_model_names(args: list[str]) -> list[str]:
    """`--model clip` / `--model=clip` -> the registered class path."""
    rewritten = list(args)
    for position, arg in enumerate(rewritten):
        if arg == "--model" and position + 1 < len(rewritten):
            rewritten[position + 1] = resolve_model(rewritten[position + 1])
        elif arg.startswith("--model="):
            rewritten[position] = "--model=" + resolve_model(arg.split("=", 1)[1])
    return rewritten


def main(args: list[str] | None = None) -> None:
    """Run the CLI; exit 1 if any video failed, 2 with a one-line message on a usage error."""
    argv = sys.argv[1:] if args is None else args
    if argv[:1] == ["bench"]:
        from vfe.bench import main as bench_main

        bench_main(argv[1:])
        return
    # Expected for an IterableDataset (the writer does not need batch indices) and an upstream
    # deprecation inside Lightning: neither is actionable for a user.
    warnings.filterwarnings("ignore", message="Couldn't infer the batch indices")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)")
    try:
        if args is None:
            # Rewritten in place so DDP's launcher, which re-runs sys.argv, sees class paths.
            sys.argv[1:] = rewrite_model_names(sys.argv[1:])
        cli = VfeCLI(
            model_class=Backbone,
            subclass_mode_model=True,
            datamodule_class=VideoDataModule,
            save_config_callback=None,
            trainer_defaults={"logger": False, "enable_model_summary": False},
            auto_configure_optimizers=False,
            args=None if args is None else rewrite_model_names(args),
        )
    except VfeError as error:
        print(f"vfe: error: {error}", file=sys.stderr)
        sys.exit(2)
    writers = [cb for cb in cli.trainer.callbacks if isinstance(cb, FeatureWriter)]
    if any(writer.total_failed for writer in writers):
        sys.exit(1)
