"""What ``pip install vm-provider`` gives: a server that loads no test code,
and extras that say when they are missing.

The server runs as the ``vm-provider`` command does (``provider_core.cli.main``
in a fresh interpreter, on 127.0.0.1 port 0), serves one VM's life, and is
stopped with SIGTERM; as it exits, it writes the names in ``sys.modules``.
(Python's import trace, ``-X importtime``, would need no code added, but it
misses modules imported with ``importlib.import_module``, as entry points are.)
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from vmp_testplugins.skips import skip_missing

from provider_core import plugins
from provider_core.pb import provider_pb2 as pb
from provider_core.pb import provider_pb2_grpc as pb_grpc
from provider_core.testing import wait_task

#: Modules only tests, the conformance kit and the transfer extra bring.
TEST_CODE = ("pytest", "_pytest", "moto", "provider_core.testing", "provider_core.conformance")
TRANSFER = ("boto3", "botocore", "requests", "provider_core.transfer")
SERVING = re.compile(r"serving provider\.v1\.Provider on 127\.0\.0\.1:(\d+) ")


def among(module: str, roots: tuple[str, ...]) -> bool:
    return any(module == root or module.startswith(root + ".") for root in roots)


#: ``vm-provider ARGS`` as its console script runs it, writing ``sys.modules`` to $MODULES at exit.
COMMAND = """
import atexit, os, sys
atexit.register(lambda: open(os.environ["MODULES"], "w").write("\\n".join(sorted(sys.modules))))
from provider_core.cli import main
sys.exit(main(sys.argv[1:]))
"""


def serve_and_stop(backend: str, table: str, tmp_path: Path) -> tuple[list[str], str]:
    """Serve ``backend`` as ``vm-provider --backend BACKEND`` does, on a free
    port; drive one VM through it; stop it with SIGTERM. Return the modules
    it had loaded and its log."""
    config = tmp_path / "plugins.toml"
    config.write_text(f'[server]\nstate_dir = "{tmp_path / "state"}"\n\n[backends.{backend}]\n{table}')
    env = {k: v for k, v in os.environ.items() if not k.startswith("VM_PROVIDER_")}
    env["MODULES"] = str(tmp_path / "modules.txt")
    args = ["--backend", backend, "--config", str(config), "--listen", "127.0.0.1:0"]
    proc = subprocess.Popen([sys.executable, "-c", COMMAND, *args], stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    assert proc.stderr is not None
    lines: list[str] = []
    port = 0
    try:
        for line in proc.stderr:
            lines.append(line)
            found = SERVING.search(line)
            if found:
                port = int(found.group(1))
                break
        assert port, "the server never said it was serving:\n" + "".join(lines[-30:])
        drive(f"127.0.0.1:{port}")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=60)
        lines += rest.splitlines(keepends=True)
    log = "".join(lines)
    assert proc.returncode == 0, log
    return (tmp_path / "modules.txt").read_text().split(), log


def drive(address: str) -> None:
    """What a client does on a fresh server: every call a deployed manager makes most."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.ProviderStub(channel)  # type: ignore[no-untyped-call]
        stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=30)
        assert stub.Validate(pb.ValidateRequest(), timeout=30).ok
        created = stub.Create(pb.CreateRequest(name="extras-vm", class_json='{"CPU": 1, "MemoryMiB": 256}'), timeout=60)
        wait_task(stub, created.task)
        wait_task(stub, stub.Power(pb.PowerRequest(id=created.id, op=pb.POWER_OP_ON), timeout=60).task)
        assert stub.Describe(pb.DescribeRequest(id=created.id), timeout=30).exists
        assert [vm.name for vm in stub.ListVMs(pb.ListVMsRequest(), timeout=60).vms if vm.id == created.id] == ["extras-vm"]
        wait_task(stub, stub.Delete(pb.DeleteRequest(id=created.id), timeout=60).task)


@pytest.mark.parametrize(
    ("backend", "table", "allowed"),
    [
        # a backend of the core alone (tests/plugins): not even the transfer extra
        ("memory", "", ()),
        # these fetch images and stream disks with provider_core.transfer: their distributions bring the extra
        ("sim", "task_seconds = 0.01\n", TRANSFER),
        ("libvirt", 'uri = "test:///default"\n', TRANSFER),
    ],
)
def test_the_served_command_loads_no_test_code(backend: str, table: str, allowed: tuple[str, ...], tmp_path: Path) -> None:
    if backend not in plugins.installed():
        skip_missing(f"backend {backend!r} is not installed (make setup installs it)")
    modules, log = serve_and_stop(backend, table, tmp_path)
    assert "provider_core.server" in modules
    assert any(among(m, (plugins.load_class(backend).__module__,)) for m in modules), log
    loaded = sorted(m for m in modules if among(m, TEST_CODE + TRANSFER) and not among(m, allowed))
    assert loaded == [], f"vm-provider --backend {backend} loaded test or extra code: {loaded}"


def blocked_import(module: str, *blocked: str) -> subprocess.CompletedProcess[str]:
    """Import ``module`` in a fresh interpreter where ``blocked`` cannot be imported."""
    code = f"import sys\nfor name in {blocked!r}:\n    sys.modules[name] = None\nimport {module}\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("missing", ["requests", "boto3", "botocore"])
def test_transfer_without_its_extra_names_the_extra(missing: str) -> None:
    proc = blocked_import("provider_core.transfer", missing)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (
        f"ImportError: provider_core.transfer needs {missing}, which the core does not install: "
        "pip install 'vm-provider[transfer]'"
    )


def test_the_server_and_the_kit_need_no_transfer_extra() -> None:
    """The core's server and the conformance kit import without requests or boto3's transfer code."""
    proc = blocked_import(
        "provider_core.cli, provider_core.server, provider_core.conformance.session", "requests", "boto3", "botocore"
    )
    assert proc.returncode == 0, proc.stderr


def test_state_url_without_the_postgres_extra_names_the_extra(tmp_path: Path) -> None:
    code = (
        "import sys\nsys.modules['psycopg'] = None\nsys.modules['psycopg_pool'] = None\n"
        "from provider_core.cli import main\nsys.exit(main(['--backend', 'memory', '--listen', '127.0.0.1:0']))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("VM_PROVIDER_")}
    env.update(XDG_STATE_HOME=str(tmp_path), VM_PROVIDER_SERVER_STATE_URL="postgresql://u:pw-1234@127.0.0.1:9/state")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "state_url needs PostgreSQL's client: pip install 'vm-provider[postgres]'" in proc.stderr
    assert "pw-1234" not in proc.stderr
