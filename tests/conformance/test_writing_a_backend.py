"""docs/writing-a-backend.md, followed to the letter: its samples, in order,
build a package that is pip-installed and passes the conformance kit.

The page is turned into one shell script: a block titled ``path`` is
written to that file (appended when the title repeats), a ``shell`` block
runs as it is, and a ``text`` block must appear in the output of the shell
block before it. Commands run in a throwaway virtual environment layered on
the project's (it sees everything installed there), so ``pip install -e .``
installs the sample for real without touching the project's environment.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "writing-a-backend.md"
BLOCK = re.compile(r'^```(\w+)(?: title="([^"]+)")?\n(.*?)^```$', re.S | re.M)
MARK = "@@@ shell block {} @@@"


def blocks() -> list[tuple[str, str, str]]:
    """(language, title, body) of every fenced block of the page."""
    return [(m.group(1), m.group(2) or "", m.group(3)) for m in BLOCK.finditer(DOC.read_text())]


def script() -> tuple[str, dict[int, list[str]]]:
    """The page as a bash script, and the expected lines after each shell block."""
    lines: list[str] = []
    written: set[str] = set()
    expected: dict[int, list[str]] = {}
    shell = -1
    for lang, title, body in blocks():
        if title:
            mode = ">>" if title in written else ">"
            written.add(title)
            lines += [f'mkdir -p "$(dirname {title})"', f"cat {mode} {title} <<'__DOC_SAMPLE__'", body + "__DOC_SAMPLE__"]
        elif lang == "shell":
            shell += 1
            lines += [f"echo '{MARK.format(shell)}'", body]
        elif lang == "text":
            expected.setdefault(shell, []).extend(line for line in body.splitlines() if line.strip())
        else:
            raise AssertionError(f"a {lang} block without a title: it would not run")
    return "\n".join(lines) + "\n", expected


def layered_venv(where: Path) -> Path:
    """A virtual environment that sees the project's packages, with ``pip``,
    ``vm-provider`` and ``pytest`` commands of its own."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True
    )
    parent = sysconfig.get_paths()["purelib"]
    (Path(purelib.stdout.strip()) / "_project_env.pth").write_text(f"import site; site.addsitedir({parent!r})\n")
    for command, module in (("pip", "pip"), ("vm-provider", "provider_core.cli"), ("pytest", "pytest")):
        wrapper = where / "bin" / command
        wrapper.write_text(f'#!/bin/sh\nexec "{python}" -m {module} "$@"\n')
        wrapper.chmod(0o755)
    return where / "bin"


def test_every_block_runs() -> None:
    langs = {lang for lang, title, _ in blocks() if not title}
    assert langs <= {"shell", "text"}
    assert {lang for lang, title, _ in blocks() if title} <= {"python", "toml"}


def follow(tmp_path: Path, env: dict[str, str], timeout: float) -> Path:
    """Run the page's blocks as one shell script in a new directory under
    ``tmp_path`` and check that each shell block printed the text blocks
    after it; that directory."""
    text, expected = script()
    (tmp_path / "follow.sh").write_text(text)
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in env.items() if k not in ("VM_PROVIDER_CONFIG", "PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", str(tmp_path / "follow.sh")],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    outputs = re.split(r"^@@@ shell block (\d+) @@@$", proc.stdout, flags=re.M)
    by_block = {int(outputs[i]): outputs[i + 1] for i in range(1, len(outputs), 2)}
    for shell, wanted in expected.items():
        out = by_block[shell]
        for line in wanted:
            assert line in out, f"{line!r} is not in the output of shell block {shell}:\n{out}"
    return work


def test_following_the_page_gives_a_backend_the_kit_passes(tmp_path: Path) -> None:
    bin_dir = layered_venv(tmp_path / "venv")
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PIP_NO_INDEX": "1",  # everything the sample needs is installed already: no network
        "PIP_NO_BUILD_ISOLATION": "0",  # build with the installed setuptools
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    work = follow(tmp_path, env, timeout=600)
    package = work / "vm-provider-mine"
    lint = subprocess.run(
        [Path(sys.executable).parent / "ruff", "check", "--config", ROOT / "pyproject.toml", package],
        capture_output=True,
        text=True,
        check=False,
    )
    assert lint.returncode == 0, lint.stdout
