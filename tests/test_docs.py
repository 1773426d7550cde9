"""The README and docs/ stay true: every relative link and anchor resolves, the quick start runs
offline as written, and the test command is the one `.ci/run` runs."""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_in_process

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces -> `-`."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    headings = re.findall(r"^#+ (.+)$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def code_block_after(page: Path, heading: str, language: str = "bash") -> str:
    text = page.read_text()
    start = text.index(heading)
    return re.search(rf"```{language}\n(.*?)```", text[start:], re.S).group(1)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(page: Path):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # not inside code blocks
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):  # https:, file:, ...
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target}"
        if anchor:
            assert anchor in anchors(linked), f"{page.name}: {target}"


@pytest.mark.slow  # the README's commands, each a process of its own
def test_the_quick_start_runs_offline_as_written(tmp_path: Path):
    (tmp_path / "raw_videos").mkdir()
    shutil.copy(REPO / "raw_videos" / "sample.mp4", tmp_path / "raw_videos")
    block = code_block_after(REPO / "README.md", "## Quick start, offline")
    commands = [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]
    assert [c.split()[:3] for c in commands] == [
        ["python", "-m", "vfe"],
        ["python", "-m", "vfe"],
        ["python", "-c", '"import'],
    ]
    for command in commands[:2]:  # in this process: vfe predict, vfe info
        result = run_in_process(shlex.split(command)[3:], tmp_path)
        assert result.returncode == 0, (command, result.stderr)
        if command == commands[0]:
            assert "vfe: warning: CLIP ViT-B/32: using RANDOM weights" in result.stderr
    shown = subprocess.run(
        [sys.executable, *shlex.split(commands[2])[1:]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    with np.load(tmp_path / "features" / "clip" / "sample.npz") as written:
        assert str(written["features"].shape) in shown.stdout


def test_the_readme_test_command_is_the_one_ci_runs():
    block = code_block_after(REPO / "README.md", "Install and run the tests")
    command = block.strip().split("&& ")[-1]
    assert command == ".venv/bin/python -m pytest -q"
    assert (REPO / ".ci" / "run").read_text().rstrip().endswith(command)
