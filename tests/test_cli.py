"""The command line end to end, in a subprocess, as a user runs it."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_vfe

from vfe.argv import rewrite_model_names, wants_verbose
from vfe.cli import main
from vfe.output.npz import TEMPORARY_SUFFIX
from vfe.predict_cli import warn_if_bf16_is_emulated


def test_clip_run_writes_the_npz_contract_and_resumes(
    video_dir: Path, tiny_clip_file: Path, tmp_path: Path
):
    output = tmp_path / "out"
    args = ["--model", "clip", "--model.arch", "custom", "--model.weights", str(tiny_clip_file)]
    args += ["--input_dir", str(video_dir), "--output_dir", str(output), "--batch_size", "20"]
    result = run_vfe(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "written 2, skipped 0, failed 0, clips 3" in result.stderr + result.stdout

    moving = np.load(output / "moving.npz")
    assert set(moving.files) >= {"features", "fps", "clip_length", "timestamps"}
    assert moving["features"].dtype == np.float32 and moving["features"].shape == (2, 32)
    assert moving["fps"].dtype == np.float64 and float(moving["fps"]) == 25.0
    assert moving["clip_length"].dtype == np.float64 and float(moving["clip_length"]) == 2.0
    assert moving["timestamps"].dtype == np.float64
    np.testing.assert_allclose(moving["timestamps"], [[0.0, 2.0], [2.0, 3.4]], atol=1e-6)
    short = np.load(output / "nested" / "short.npz")  # the input tree is mirrored
    assert short["features"].shape == (1, 32)
    np.testing.assert_allclose(short["timestamps"], [[0.0, 1.0]], atol=1e-6)
    # Nothing but the output folder appears in the working directory (no Lightning logs).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert not [p for p in output.rglob("*") if p.name.endswith(TEMPORARY_SUFFIX)]

    before = (output / "moving.npz").stat().st_mtime_ns
    rerun = run_vfe(*args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert "written 0, skipped 2" in rerun.stderr + rerun.stdout
    assert (output / "moving.npz").stat().st_mtime_ns == before

    redo = run_vfe(*args, "--overwrite", "true", cwd=tmp_path)  # the older spelling works too
    assert "written 2, skipped 0" in redo.stderr + redo.stdout
    assert (output / "moving.npz").stat().st_mtime_ns != before


def test_slowfast_run_writes_2304_d_clips(slowfast_pyth_file: Path, tmp_path: Path):
    from vfe.bench.synthetic import write_video

    write_video(tmp_path / "in" / "v.mp4", num_frames=30, fps=25, height=72, width=96)
    result = run_vfe(
        "--model", "slowfast", "--model.weights", str(slowfast_pyth_file),
        "--input_dir", "in", "--clip_len", "1", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "vfe: 1 video under in, 0 already done" in result.stderr  # not "1 videos"
    saved = np.load(tmp_path / "features" / "slowfast" / "v.npz")  # the default output folder
    assert saved["features"].shape == (2, 2304) and saved["features"].dtype == np.float32
    np.testing.assert_allclose(saved["timestamps"], [[0.0, 1.0], [1.0, 1.2]], atol=1e-6)
    assert float(saved["clip_length"]) == 1.0


def test_bad_videos_are_reported_and_the_rest_written(
    video_dir: Path, tiny_clip_file: Path, tmp_path: Path
):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "good.mp4").write_bytes((video_dir / "moving.mp4").read_bytes())
    (inputs / "text.mp4").write_text("this is not a video\n")
    (inputs / "empty.mkv").write_bytes(b"")
    result = run_vfe(
        "--model", "clip", "--model.arch", "custom", "--model.weights", str(tiny_clip_file),
        "--input_dir", "in", "--output_dir", "out", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    assert (tmp_path / "out" / "good.npz").is_file()
    records = [json.loads(line) for line in (tmp_path / "out" / "failures.jsonl").open()]
    assert sorted(r["relative_path"] for r in records) == ["empty.mkv", "text.mp4"]
    assert all(r["stage"] and r["error"] and r["path"] for r in records)
    assert "2 video(s) failed" in result.stderr + result.stdout


def test_print_config_can_be_fed_back(video_dir: Path, tiny_clip_file: Path, tmp_path: Path):
    printed = run_vfe(
        "--config", str(Path(__file__).parents[1] / "configs" / "clip.yaml"),
        "--model.arch", "custom", "--model.weights", str(tiny_clip_file),
        "--input_dir", str(video_dir), "--output_dir", "out", "--print_config", cwd=tmp_path,
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    assert "vfe.backbones.openai_clip.CLIPBackbone" in printed.stdout
    (tmp_path / "config.yaml").write_text(printed.stdout)
    result = run_vfe("--config", "config.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "moving.npz").is_file()


def test_usage_error_is_one_line_without_traceback(tmp_path: Path):
    result = run_vfe("--model", "clip", "--input_dir", "nowhere", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "vfe: error: --input_dir 'nowhere' is not a folder" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "resnet"], "unknown model 'resnet'; choose one of clip, slowfast"),
        (["--model", "clip", "--model.arch", "ViT-Z/1"], "not a CLIP architecture"),
        (["--model", "clip", "--model.weights", "/no/file.pt"], "no such file"),
        (["--model", "clip", "--device", "tpu"], "--device 'tpu' is not allowed"),
        (["--model", "slowfast", "--input_dir", "{empty}"], "holds no videos"),
        (["--model", "clip", "--clip_len", "0"], "--clip_len must be a positive"),
        (
            ["--model", "clip", "--data.min_segment_seconds", "-5"],
            "--data.min_segment_seconds must be a positive number of seconds, got -5",
        ),
        (["--model", "clip", "--model.frames_per_clip", "0"], "--model.frames_per_clip must be"),
    ],
)
def test_usage_errors(args, message, tmp_path: Path, capsys, video_dir: Path):
    (tmp_path / "empty").mkdir()
    args = [a.replace("{empty}", str(tmp_path / "empty")) for a in args]
    if "--input_dir" not in args:
        args += ["--input_dir", str(video_dir)]
    args += ["--output_dir", str(tmp_path / "out")]
    if "--model.weights" not in args and "slowfast" not in args:
        args += ["--model.weights", "random"]
    if "slowfast" in args:
        args += ["--model.weights", "random"]
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_without_gpu_is_an_error_not_a_silent_fallback(tmp_path: Path, capsys, video_dir):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--model", "clip", "--device", "cuda", "--input_dir", str(video_dir)])
    assert exit_info.value.code == 2
    assert "--device cuda was asked for, but PyTorch sees no CUDA GPU" in capsys.readouterr().err


@pytest.mark.slow
def test_console_script_is_the_same_command(tmp_path: Path):
    script = Path(sys.executable).parent / "vfe"
    result = subprocess.run(
        [str(script), "predict", "--model", "slowfast", "--input_dir", "nowhere"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "vfe: error: --input_dir 'nowhere' is not a folder" in result.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model", "clip"], ["--model", "vfe.backbones.openai_clip.CLIPBackbone"]),
        (["--model=slowfast"], ["--model=vfe.backbones.slowfast.SlowFastBackbone"]),
        (["--model", "CLIPBackbone"], ["--model", "vfe.backbones.openai_clip.CLIPBackbone"]),
        (
            ["--model.arch", "custom", "--clip_len", "1", "--model", "clip"],
            ["--model", "vfe.backbones.openai_clip.CLIPBackbone", "--model.arch", "custom",
             "--clip_len", "1"],
        ),
        (["--model.help", "clip"], ["--model.help", "vfe.backbones.openai_clip.CLIPBackbone"]),
        (["--model", "my.pkg.Backbone"], ["--model", "my.pkg.Backbone"]),
    ],
)  # fmt: skip
def test_model_names_are_resolved_wherever_they_are_typed(args, expected):
    assert rewrite_model_names(args) == expected


def test_short_model_name_inside_a_config_file(video_dir, tiny_clip_file, tmp_path: Path):
    (tmp_path / "my.yaml").write_text(
        f"model: clip\ninput_dir: {video_dir}\noutput_dir: out\n"
        f"trainer:\n  enable_progress_bar: false\n"
    )
    result = run_vfe(
        "--config", "my.yaml", "--model.arch", "custom", "--model.weights", str(tiny_clip_file),
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert np.load(tmp_path / "out" / "moving.npz")["features"].shape == (2, 32)


def test_options_before_the_model_name_and_a_plain_overwrite_flag(
    video_dir, tiny_clip_file, tmp_path: Path
):
    args = [
        "--model.arch", "custom", "--model.weights", str(tiny_clip_file), "--model", "clip",
        "--input_dir", str(video_dir), "--output_dir", "out", "--overwrite",
    ]  # fmt: skip
    result = run_vfe(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "written 2" in result.stdout + result.stderr


@pytest.mark.slow
def test_runs_are_quiet_unless_verbose(video_dir, tiny_clip_file, tmp_path: Path):
    args = [
        "--model", "clip", "--model.arch", "custom", "--model.weights", str(tiny_clip_file),
        "--input_dir", str(video_dir), "--output_dir", "out", "--trainer.enable_progress_bar",
        "false",
    ]  # fmt: skip
    # A process of its own: what Lightning and the libraries print reaches its stderr.
    quiet = run_vfe(*args, cwd=tmp_path, process=True)
    assert quiet.returncode == 0, quiet.stderr
    lines = [line for line in (quiet.stdout + quiet.stderr).splitlines() if line.strip()]
    assert all(line.startswith(("vfe:", "  ")) for line in lines), lines
    verbose = run_vfe(*args, "--overwrite", "--verbose", cwd=tmp_path, process=True)
    assert "GPU available" in verbose.stdout + verbose.stderr


def vfe(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m vfe ARGS` (any command) in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "vfe", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_vfe_help_is_a_short_page_of_vfe_commands(tmp_path: Path):
    for args in ([], ["--help"], ["-h"]):
        result = vfe(*args, cwd=tmp_path)
        assert result.returncode == 0 and result.stdout.startswith("usage: vfe COMMAND")
        for command in ("predict", "info", "bench", "text", "search", "pack", "--version"):
            assert f"  {command}" in result.stdout or f"vfe {command}" in result.stdout
        assert len(result.stdout.splitlines()) < 30 and "Lightning Trainer" not in result.stdout
    unknown = vfe("extract", cwd=tmp_path)
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == (
        "vfe: error: unknown command 'extract'; choose one of predict, info, bench, text, "
        "search, pack, unpack, npy (vfe --help)"
    )


def test_version(tmp_path: Path):
    from importlib import metadata

    result = vfe("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == f"vfe {metadata.version('vfe')}\n"


def test_predict_help_leads_with_vfe_options_and_backbones(tmp_path: Path):
    short = run_vfe("--help", cwd=tmp_path)
    assert short.returncode == 0 and short.stdout.startswith("usage: vfe predict --model NAME")
    assert len(short.stdout.splitlines()) < 50 and "--trainer.accelerator" not in short.stdout
    assert "vfe predict --help all" in short.stdout
    # every flag's help starts after a space, however long the flag
    assert re.search(r"\n  --output_dtype +float32", short.stdout)
    result = run_vfe("--help", "all", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("usage: vfe predict --model NAME")
    text = result.stdout
    lightning = text.index("--trainer.accelerator")
    for own in ("  clip ", "  slowfast ", "--input_dir", "--overwrite", "--model.weights FILE"):
        assert text.index(own) < lightning, own
    assert "Useful to" not in text  # Lightning's description, cut mid-sentence
    backbone = run_vfe("--model.help", "clip", cwd=tmp_path)
    assert backbone.returncode == 0, backbone.stderr
    assert "--model.arch ARCH" in backbone.stdout and "ViT-L/14" in backbone.stdout


@pytest.mark.parametrize(
    "ckpt", [["--ckpt_path", "weights.ckpt"], ["--ckpt_path=weights.ckpt"]], ids=["flag", "equals"]
)
def test_ckpt_path_points_at_model_weights(ckpt, video_dir: Path, tmp_path: Path):
    result = run_vfe("--model", "clip", "--input_dir", str(video_dir), *ckpt, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "vfe: error: --ckpt_path weights.ckpt is Lightning's option to resume training; vfe "
        "loads a backbone's weights with --model.weights FILE (--model.NAME.weights FILE with "
        "several backbones)"
    ]


def test_bf16_without_native_support_warns_with_the_faster_choice(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    warn_if_bf16_is_emulated("bf16-mixed", "cpu")
    message = capsys.readouterr().err
    assert "no native bf16" in message and "--trainer.precision 32-true" in message
    warn_if_bf16_is_emulated("32-true", "cpu")
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("problem", ["a file", "read-only"])
def test_unusable_output_folder_is_one_line_before_any_work(problem, video_dir, tmp_path: Path):
    if problem == "a file":
        (tmp_path / "out").write_text("not a folder")
        expected = "is not a folder"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        (tmp_path / "out").mkdir(mode=0o555)
        expected = "is not writable"
    result = run_vfe(
        "--model", "clip", "--model.weights", "/no/such/weights.pt", "--input_dir",
        str(video_dir), "--output_dir", "out/features", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and expected in result.stderr
    assert "no such file" not in result.stderr  # stopped before the model was loaded


@pytest.mark.parametrize(
    ("argv", "verbose"),
    [
        ([], False),
        (["--verbose"], True),
        (["--verbose", "--clip_len", "1"], True),
        (["--verbose", "false"], False),
        (["--verbose=true"], True),
        (["--verbose=false"], False),
    ],
)
def test_verbose_flag_is_read_as_the_parser_reads_it(argv, verbose):
    assert wants_verbose(["predict", *argv]) is verbose


def test_the_help_page_lists_each_backbone_with_a_whole_sentence():
    """Was: `pytorchvideoA PyTorchVideo ...` (no separator) and summaries cut mid-sentence."""
    from vfe.backbones.registry import MODELS
    from vfe.predict_cli import predict_help_intro

    lines = predict_help_intro().splitlines()
    for name in MODELS:
        (line,) = [line for line in lines if line.startswith(f"  {name} ")]
        summary = line[len(name) + 2 :].strip()
        assert summary.endswith((".", ")")) and summary[0].isupper(), line


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["--model", "clip", "--model.wieghts", "x"],
            "vfe: error: unknown option --model.wieghts for CLIPBackbone; did you mean "
            "--model.weights? (vfe predict --help lists every option)",
        ),
        (
            ["--model", "clip", "--batchsize", "3"],
            "vfe: error: unknown option --batchsize; did you mean --batch_size? (vfe predict "
            "--help lists every option)",
        ),
        (
            ["--model", "clip,slowfast", "--model.weights", "x"],
            "vfe: error: --model.weights: with several backbones each takes its own options, "
            "--model.NAME.weights (e.g. --model.clip.weights)",
        ),
        ([], "vfe: error: no backbone given: add --model NAME (vfe predict --help lists them)"),
        (
            ["--model", "clip", "--clip_len", "abc"],
            "vfe: error: --clip_len: Expected a <class 'float'>. Got value: abc",
        ),
    ],
    ids=["backbone option", "vfe option", "per backbone", "no model", "bad value"],
)
def test_option_errors_are_one_line_naming_the_closest_option(args, line, capsys, video_dir):
    """Was: 64-72 lines of usage and Union subtypes."""
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", *args, "--input_dir", str(video_dir)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [line], err


@pytest.mark.parametrize(
    ("count", "seconds", "shown"),
    [(0, 5.0, "0.0"), (12, 1.0, "12.0"), (1, 10.0, "0.1"), (1, 29.0, "0.034")],
)
def test_a_clip_rate_is_never_rounded_to_zero(count: int, seconds: float, shown: str):
    from vfe.messages import rate_text

    assert rate_text(count, seconds) == shown


def test_a_stop_message_starts_on_a_line_of_its_own():
    """Ctrl-C leaves the progress bar open at the end of its line; it is closed first."""
    import io

    from tqdm import tqdm

    from vfe.predict_cli import end_progress_lines

    terminal = io.StringIO()
    bar = tqdm(total=10, file=terminal)
    bar.update(3)
    end_progress_lines()
    assert terminal.getvalue().endswith("\n")


def test_the_summary_says_what_the_wall_time_counts(
    video_dir: Path, tiny_clip_file: Path, tmp_path: Path
):
    args = ["--model", "clip", "--model.arch", "custom", "--model.weights", str(tiny_clip_file)]
    args += ["--input_dir", str(video_dir)]
    result = run_vfe(*args, "--data.num_workers", "0", "--device", "cpu", cwd=tmp_path)
    again = run_vfe(*args, "--data.num_workers", "0", "--device", "cpu", cwd=tmp_path)
    for run in (result, again):
        (summary,) = [line for line in run.stderr.splitlines() if "written" in line]
        assert re.search(r"extraction \d+\.\d s, wall time \d+\.\d s with start-up", summary)


@pytest.mark.parametrize("command", ["pack", "unpack", "npy", "info"])
def test_help_of_the_light_commands_needs_no_torch(command: str):
    code = (
        "import sys\nfrom vfe.cli import main\ntry:\n"
        f"    main([{command!r}, '--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip().endswith("False"), result.stdout + result.stderr


def test_text_and_search_help_say_every_argument_in_whole_sentences():
    from vfe.search.command import DESCRIPTION as search
    from vfe.text.command import DESCRIPTION as text

    assert text.endswith("a features folder was made with.")
    assert search.endswith("(as `vfe text` does).")
    for command, argument, help_text in (
        ("text", "--output_dir OUTPUT_DIR", "folder for the qid{qid}.npz files"),
        ("search", "query", "what to look for, in words"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "vfe", command, "--help"], capture_output=True, text=True
        )
        assert re.search(rf"\n  {re.escape(argument)}\s+{re.escape(help_text)}", result.stdout)
