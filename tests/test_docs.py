"""The documentation cannot go stale: the site builds in strict mode, and every runnable block runs.

A block of README.md or docs/**/*.md is runnable when it is fenced as ```bash or ```python and the line right before
its opening fence is `<!-- runnable -->`. Each runnable block is one test, named FILE:LINE of its opening fence, run
in a folder that holds (the `docs_world` fixture, made once per session):

    video.mp4               a generated 8-frame 32 px motion video
    videos/<class>/*.mp4    generated motion videos in class folders (8 classes, 2 each)
    runs/tiny/              a run of the `tiny` preset trained a few steps on them, with best.pt
    ila, python             on PATH: the code under test (this checkout), as `python -m ila`

The blocks of one page run in order in one copy of that folder, so a block may use what an earlier block of its page
wrote; a block selected alone first runs the blocks before it. bash blocks run under `bash -euo pipefail`, python
blocks under this interpreter; a block fails on a non-zero exit.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
MARK = "<!-- runnable -->"
LANGUAGES = ("bash", "python")
FENCE = re.compile(r"^(`{3,}|~{3,})\s*([\w+-]*)")
BLOCK_TIMEOUT = 300        # seconds; every block is meant to take seconds


class Block(NamedTuple):
    page: Path
    line: int              # 1-based line of the opening fence
    language: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT).as_posix()}:{self.line}"


def doc_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def fenced_blocks(page: Path) -> list[tuple[int, str, str, bool]]:
    """(line of the opening fence, language, code, marked runnable) of every top-level fenced block of a page."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, language = opening.group(1), opening.group(2)
        end = i + 1
        while end < len(lines) and not (lines[end].startswith(fence[0] * len(fence))
                                        and not lines[end].strip(fence[0]).strip()):
            end += 1
        marked = i > 0 and lines[i - 1].strip() == MARK
        blocks.append((i + 1, language, "\n".join(lines[i + 1:end]) + "\n", marked))
        i = end + 1
    return blocks


def runnable_blocks() -> list[Block]:
    return [Block(page, line, language, code) for page in doc_pages()
            for line, language, code, marked in fenced_blocks(page) if marked]


BLOCKS = runnable_blocks()


# ------------------------------------------------------------------------------------------------ the folder

@pytest.fixture(scope="session")
def docs_world(tmp_path_factory):
    """The folder every page starts from (see the module docstring) and the environment its blocks run in. The run is
    trained in a child process, as a reader would train it, leaving this process's torch settings alone."""
    from ila.data.synthetic import make_dataset

    world = tmp_path_factory.mktemp("docs-world")
    generated = tmp_path_factory.mktemp("docs-generated")
    make_dataset(str(generated), num_train=16, num_val=0, size=32, frames=8, seed=0, verbose=False,
                 layout="folders", distractors=0, texture=0)
    shutil.move(str(generated / "train"), str(world / "videos"))
    first_class = sorted(p for p in (world / "videos").iterdir())[0]
    shutil.copyfile(sorted(first_class.glob("*.mp4"))[0], world / "video.mp4")

    bin_dir = tmp_path_factory.mktemp("docs-bin")
    for name, command in (("ila", f'"{sys.executable}" -m ila "$@"'), ("python", f'"{sys.executable}" "$@"')):
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\nexec {command}\n")
        script.chmod(0o755)
    env = dict(os.environ)
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1", MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p))
    train = subprocess.run([str(bin_dir / "ila"), "train", "--config", "tiny", "--output", "runs/tiny", "--set",
                            "data.train_list=videos", "data.val_split=0.5", "train.epochs=1", "train.batch_size=4",
                            "data.workers=0"], cwd=world, env=env, capture_output=True, text=True, timeout=600,
                           stdin=subprocess.DEVNULL)
    assert train.returncode == 0 and (world / "runs" / "tiny" / "best.pt").is_file(), train.stderr[-3000:]
    return world, env


class Pages:
    """Per page: the folder its blocks run in and how many of them have run there."""

    def __init__(self, root: Path):
        self.root, self.state = root, {}

    def folder(self, world: Path, block: Block, env: dict) -> Path:
        page_blocks = [b for b in BLOCKS if b.page == block.page]
        index = page_blocks.index(block)
        folder, done = self.state.get(block.page, (None, -1))
        if folder is None or done != index - 1:
            folder = self.root / f"{len(list(self.root.iterdir())):03d}-{block.page.stem}"
            shutil.copytree(world, folder)
            for earlier in page_blocks[:index]:
                result = run(earlier, folder, env)
                if result.returncode != 0:
                    pytest.fail(f"an earlier block of this page failed: {report(earlier, result)}", pytrace=False)
        self.state[block.page] = (folder, index)
        return folder

    def failed(self, block: Block) -> None:
        self.state.pop(block.page, None)      # the next block of the page starts again from a fresh copy


@pytest.fixture(scope="session")
def pages(tmp_path_factory):
    return Pages(tmp_path_factory.mktemp("docs-pages"))


def run(block: Block, folder: Path, env: dict) -> subprocess.CompletedProcess:
    command = ["bash", "-euo", "pipefail", "-c", block.code] if block.language == "bash" else \
        [sys.executable, "-c", block.code]
    try:
        return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(command, 124, e.stdout or "", f"timed out after {BLOCK_TIMEOUT} s")


def report(block: Block, result: subprocess.CompletedProcess) -> str:
    tail = lambda text: "\n".join((text or "").splitlines()[-25:])  # noqa: E731
    return (f"{block.id}: the {block.language} block exited {result.returncode}\n{block.code}"
            f"--- stdout (end)\n{tail(result.stdout)}\n--- stderr (end)\n{tail(result.stderr)}")


# ------------------------------------------------------------------------------------------------ the tests

@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_runnable_block(block, docs_world, pages):
    world, env = docs_world
    folder = pages.folder(world, block, env)
    result = run(block, folder, env)
    if result.returncode != 0:
        pages.failed(block)
        pytest.fail(report(block, result), pytrace=False)


def test_runnable_marks_precede_bash_or_python_blocks():
    """A mark that is not right before a ```bash or ```python fence would silently run nothing."""
    wrong = []
    for page in doc_pages():
        lines = page.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if line.strip() != MARK:
                continue
            after = FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
            if not after or after.group(2) not in LANGUAGES:
                wrong.append(f"{page.relative_to(ROOT)}:{i + 1}")
    assert not wrong, f"{MARK} must be the line right before a ```bash or ```python fence: {', '.join(wrong)}"


def test_the_readme_and_the_guide_have_runnable_blocks():
    ids = [b.id for b in BLOCKS]
    for page in ("README.md", "docs/guide/predict.md", "docs/guide/train.md", "docs/guide/export.md"):
        assert any(i.startswith(page + ":") for i in ids), f"{page} has no runnable block"
    assert {"bash", "python"} <= {b.language for b in BLOCKS if b.page.name == "README.md"}


def test_the_block_parser_reads_marks_fences_and_lines(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n<!-- runnable -->\n```bash\necho one\n```\n\n```python\nprint(2)\n```\n"
                    "<!-- runnable -->\n````python\nprint('```')\n````\n", encoding="utf-8")
    assert fenced_blocks(page) == [(3, "bash", "echo one\n", True), (7, "python", "print(2)\n", False),
                                   (11, "python", "print('```')\n", True)]


def test_readme_links_resolve():
    """The README is outside the site (its links are not checked by mkdocs): each relative link names a file."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    links = [m.split("#")[0] for m in re.findall(r"\]\(([^)\s]+)\)", text)
             if not re.match(r"^[a-z][a-z0-9+.-]*:|^#", m)]
    missing = [link for link in links if not (ROOT / link).exists()]
    assert links and not missing, f"README.md links to missing files: {missing}"


def test_site_builds_in_strict_mode(tmp_path):
    """`mkdocs build --strict`: a broken link or anchor, a page missing from the nav or a nav entry without a page,
    and a docstring mkdocstrings cannot read all fail."""
    if importlib.util.find_spec("mkdocs") is None:
        if os.environ.get("CI"):
            pytest.fail("mkdocs is not installed: the docs extra (bash scripts/setup.sh dev,docs)", pytrace=False)
        pytest.skip("mkdocs is not installed (bash scripts/setup.sh docs)")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                             str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert (tmp_path / "site" / "reference" / "pipeline" / "index.html").is_file()
