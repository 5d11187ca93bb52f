"""ImportDisk and ImagePrepare write a file of a storage: calls naming the
same file, whether by an empty storage hint (``import_storage``) or by the
storage's name, wait for each other."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import test_datapath
from pvenode import PveNode
from test_datapath import sha256

from provider_core.conformance.servers import HttpSink
from provider_core.pb import provider_pb2 as pb

#: The data path's fixtures: the node's shell, staging claims, a provider using both.
node, claims, dp = test_datapath.node, test_datapath.claims, test_datapath.dp


def holders(h: Any, key: str) -> int:
    """How many calls hold or wait for the runtime's lock on ``key``."""
    return int(h.server.runtime._locks.users(key))


def test_an_image_is_locked_by_the_storage_it_goes_to(dp: Any) -> None:
    backend = dp.backend
    assert backend.settings.import_storage == "cloud"
    assert backend.lock_key("image:/golden") == backend.lock_key("image:cloud/golden") == "image:cloud/golden"
    assert backend.lock_key("image:other/golden") == "image:other/golden"
    assert backend.lock_key("100") == "100"


def test_two_imports_of_one_target_named_two_ways_are_serialised(dp: Any, pve: Any, node: PveNode, tmp_path: Path) -> None:
    src = tmp_path / "web"
    src.mkdir()
    image = src / "golden.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "32M"], check=True)
    digest = sha256(image)
    with HttpSink(src) as sink:
        sink.delay = 2.0  # the first import is still downloading when the second comes
        url = sink.url("golden.qcow2")
        kw = {"verify_checksum": True, "expected_checksum": digest}
        first = dp.stub.ImportDisk.future(
            pb.ImportDiskRequest(source_url=url, target_name="golden", format="qcow2", **kw), timeout=120
        )
        end = time.monotonic() + 30
        while holders(dp, "image:cloud/golden") < 1 and time.monotonic() < end:
            time.sleep(0.02)
        second = dp.stub.ImportDisk.future(
            pb.ImportDiskRequest(source_url=url, target_name="golden", format="qcow2", storage_hint="cloud", **kw),
            timeout=120,
        )
        while holders(dp, "image:cloud/golden") < 2 and time.monotonic() < end:
            time.sleep(0.02)
        assert holders(dp, "image:cloud/golden") == 2, "the second import waits for the first"
        assert not first.done()
        assert first.result().checksum == second.result().checksum == digest
        fetched = [r for r in sink.requests if r.method == "GET"]
    assert len(fetched) == 1  # the second found the first one's file, and took it
    assert sha256(node.path("cloud:import/golden.qcow2")) == digest
    assert holders(dp, "image:cloud/golden") == 0
