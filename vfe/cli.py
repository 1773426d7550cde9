"""`vfe COMMAND ...`: dispatches to `predict`, `info`, `bench`, `text`, `search`, `pack`,
`unpack` and `npy`, importing only what the command needs (torch and Lightning take seconds to
import: `vfe --help`, `--version` and `info` do without them)."""

import sys
import warnings
from importlib import metadata

from vfe.errors import ExitCode

HELP = """usage: vfe COMMAND [options]      (python -m vfe COMMAND ...)

Per-clip video features (CLIP, SlowFast), one .npz per video, on PyTorch Lightning.

commands:
  predict   extract features: vfe predict --model clip --input_dir raw_videos/
  info      how feature files were made, and which videos failed: vfe info features/clip/
  bench     measure speed and memory on generated videos: vfe bench --help
  text      query text features with a features folder's model: vfe text --help
  search    rank a folder's clips by a text query: vfe search "a dog" features/clip/
  pack      a features folder as one HDF5 file (UniVTG's cache): vfe pack DIR OUT.h5
  unpack    an HDF5 file from pack back into .npz files: vfe unpack FILE.h5 DIR
  npy       each .npz's features as a bare .npy (Lighthouse's audio): vfe npy DIR OUT_DIR

  vfe predict --help   vfe's options, the backbones, then every Lightning option
  vfe --version        the installed version

examples:
  vfe predict --model clip                          CLIP ViT-B/32 over raw_videos/, 2-s clips
  vfe predict --model slowfast --trainer.devices 4 --trainer.strategy ddp
  vfe predict --model clip,slowfast                 both from one decode of each video
  vfe predict --config configs/clip.yaml            the same from a yaml file
"""
COMMANDS = ("predict", "info", "bench", "text", "search", "pack", "unpack", "npy")


def version() -> str:
    try:
        return metadata.version("vfe")
    except metadata.PackageNotFoundError:
        from vfe import __version__

        return __version__


def hide_library_warnings() -> None:
    """Upstream deprecations users cannot act on (`torch.jit` in clip's loader, clip's
    `pkg_resources`); `--verbose` shows them."""
    warnings.filterwarnings("ignore", message=r"`torch\.jit\..*` is deprecated")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")


def main(args: list[str] | None = None) -> None:
    """Run the command `args[0]` (None: `sys.argv[1:]`)."""
    argv = sys.argv[1:] if args is None else args
    command = argv[0] if argv else None
    if command in (None, "-h", "--help", "help"):
        print(HELP, end="")
        return
    if command in ("-V", "--version"):
        print(f"vfe {version()}")
        return
    if "--verbose" not in argv:
        hide_library_warnings()
    if command == "info":
        from vfe.output.info import main as info_main

        info_main(argv[1:])
    elif command == "bench":
        from vfe.bench.command import main as bench_main

        bench_main(argv[1:])
    elif command == "text":
        from vfe.text.command import main as text_main

        text_main(argv[1:])
    elif command in ("pack", "unpack"):
        from vfe.output.pack import main as pack_main

        pack_main(argv)
    elif command == "npy":
        from vfe.output.npy_export import main as npy_main

        npy_main(argv[1:])
    elif command == "search":
        from vfe.search.command import main as search_main

        search_main(argv[1:])
    elif command == "predict":
        from vfe.predict_cli import main as predict_main

        predict_main(args)
    else:
        print(
            f"vfe: error: unknown command {command!r}; choose one of {', '.join(COMMANDS)} "
            "(vfe --help)",
            file=sys.stderr,
        )
        sys.exit(ExitCode.USAGE)
