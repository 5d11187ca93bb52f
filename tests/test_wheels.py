"""The install docs hold outside the development venv.

The distributions are built as wheels from a copy of the clone (no
network for them), the core and the Proxmox backend are installed from those
wheels into a fresh virtual environment with no dev extras (their
dependencies come from the machine's package index, as an operator's would),
and docs/writing-a-backend.md is followed there: its backend is
pip-installed and the conformance kit passes it, run both as
``vm-provider conformance`` and as a pytest plugin.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTIONS = {
    ".": "vm_provider",
    "backends/libvirt": "vm_provider_libvirt",
    "backends/proxmox": "vm_provider_proxmox",
    "examples/sim": "vm_provider_sim",
}
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache")
# boto3 is not among them: the Proxmox backend's data path streams disks with provider_core.transfer.
DEV_ONLY = {"pytest-asyncio", "pytest-timeout", "hypothesis", "ruff", "mypy", "grpcio-tools", "fakepve", "moto"}


def page_follower() -> ModuleType:
    """tests/conformance/test_writing_a_backend.py: how the page becomes a script."""
    path = ROOT / "tests" / "conformance" / "test_writing_a_backend.py"
    spec = importlib.util.spec_from_file_location("writing_a_backend_page", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def site_packages(bin_dir: Path) -> str:
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    return run(bin_dir / "python", "-c", code, cwd=bin_dir).stdout.strip()


def run(*args: str | Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One wheel per distribution, built from a copy of the clone."""
    where = tmp_path_factory.mktemp("wheels")
    source = where / "src"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    dist = where / "dist"
    run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist,
        *(source / d for d in DISTRIBUTIONS),
    )  # fmt: skip
    return dist


@pytest.fixture(scope="module")
def clean_venv(wheels: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv: the core and the Proxmox backend from their wheels,
    pytest (the page's last step runs it) and a setuptools that builds the
    page's backend; nothing else of the project's."""
    venv = tmp_path_factory.mktemp("venv")
    run(sys.executable, "-m", "venv", "--clear", venv)
    bin_dir = venv / "bin"
    core, proxmox = (next(wheels.glob(f"{name}-*.whl")) for name in ("vm_provider", "vm_provider_proxmox"))
    run(bin_dir / "pip", "install", "-q", core, proxmox, "pytest", "setuptools>=68")
    return bin_dir


def test_each_distribution_builds_its_own_wheel(wheels: Path) -> None:
    built = sorted(p.name.split("-")[0] for p in wheels.glob("*.whl"))
    assert built == sorted(DISTRIBUTIONS.values())
    with zipfile.ZipFile(next(wheels.glob("vm_provider-*.whl"))) as core:
        names = core.namelist()
    assert "provider_core/conformance/kit.py" in names
    assert "provider_core/pb/provider_pb2.py" in names
    assert not [n for n in names if n.startswith(("tests/", "backends/", "vm_provider_libvirt/", "vmp_testplugins/"))]


def test_the_clean_venv_serves_a_backend_from_its_wheel(clean_venv: Path) -> None:
    listed = run(clean_venv / "pip", "list", "--format=freeze").stdout
    installed = {line.split("==")[0].lower() for line in listed.splitlines()}
    assert {"vm-provider", "vm-provider-proxmox"} <= installed
    assert not installed & DEV_ONLY
    assert "vm-provider-testplugins" not in installed
    # running.md: exit status 0 when every backend named loads
    run(clean_venv / "vm-provider", "backends", "proxmox")
    missing = subprocess.run(
        [clean_venv / "vm-provider", "backends", "libvirt"], capture_output=True, text=True, check=False, cwd=clean_venv
    )
    assert missing.returncode == 1, missing.stdout + missing.stderr  # running.md: a backend named but not installed


def test_the_tutorial_backend_passes_the_kit_in_the_clean_venv(clean_venv: Path, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PATH": f"{clean_venv}{os.pathsep}{os.environ['PATH']}",
        "VIRTUAL_ENV": str(clean_venv.parent),
        "PIP_NO_INDEX": "1",  # the page's backend needs nothing the venv lacks
        "PIP_NO_BUILD_ISOLATION": "0",  # build it with the venv's setuptools
    }
    work = page_follower().follow(tmp_path, env, timeout=300)
    # Everything ran from the clean venv, not from the project's.
    code = "import provider_core, vm_provider_mine; print(provider_core.__file__); print(vm_provider_mine.__file__)"
    where = run(clean_venv / "python", "-c", code, cwd=tmp_path).stdout.split()
    assert where == [
        f"{site_packages(clean_venv)}/provider_core/__init__.py",
        f"{work}/vm-provider-mine/vm_provider_mine/__init__.py",  # pip install -e .
    ]
