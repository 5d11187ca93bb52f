"""The kit passes the libvirt backend: on libvirt's test driver, configured
exactly as docs/conformance.md shows (with its skips, each with a reason),
and on a real libvirt daemon running QEMU, where nothing is skipped."""

from __future__ import annotations

import re
import secrets
import tomllib
from pathlib import Path
from typing import Any

import pytest
from vmp_testplugins.testbed import libvirtd_uri, load_libvirt_layer

from provider_core.conformance.report import FAIL, PASS, SKIP

ROOT = Path(__file__).resolve().parents[2]


def documented_test_driver_config() -> dict[str, Any]:
    text = (ROOT / "docs" / "conformance.md").read_text()
    (sample,) = [b for b in re.findall(r"^```toml\n(.*?)^```$", text, flags=re.S | re.M) if "[backends.libvirt]" in b]
    return tomllib.loads(sample)


def test_kit_passes_libvirt_on_the_test_driver(run_kit: Any) -> None:
    config = documented_test_driver_config()
    fixtures = config["conformance"]["libvirt"]
    results = run_kit("libvirt", config["backends"]["libvirt"], fixtures)
    assert {r.check.name: r.detail for r in results if r.status == FAIL} == {}
    assert "skip" not in fixtures, "the test driver's offer says what it cannot do: nothing needs skipping by hand"
    # every skip is what the test driver does not offer, or what the kit could not look at there
    skipped = [r.detail for r in results if r.status == SKIP]
    assert skipped
    assert all(detail.startswith("this endpoint does not ") or "was not checked" in detail for detail in skipped)
    assert sum(r.status == PASS for r in results) >= 25


def test_disks_the_test_driver_cannot_grow_are_refused_and_reported_skipped(run_kit: Any) -> None:
    """Growing a stopped VM's disks is no capability of its own: the test
    driver, which cannot resize volumes, answers UNIMPLEMENTED and changes
    nothing, and the kit reports the check skipped with that answer."""
    results = run_kit("libvirt", {"uri": "test:///default"}, {}, select="reconfigure.grow_disk_stopped")
    assert [(r.check.name, r.status) for r in results] == [("reconfigure.grow_disk_stopped", SKIP)]
    assert results[0].detail.startswith("this endpoint does not grow disks: Reconfigure answered UNIMPLEMENTED: ")
    assert "needs volume resizing, which libvirt's test driver does not implement" in results[0].detail


@pytest.mark.libvirtd
@pytest.mark.slow
def test_kit_passes_libvirt_on_a_real_daemon(run_kit: Any) -> None:
    load_libvirt_layer().skip_without_libvirtd()
    prefix = f"cft{secrets.token_hex(3)}-"
    try:
        results = run_kit("libvirt", {"uri": libvirtd_uri()}, {"graceful_timeout": 3, "name_prefix": prefix})
    finally:
        remove_volumes(prefix)
    assert {r.check.name: r.detail for r in results if r.status != PASS} == {}


def remove_volumes(prefix: str) -> None:
    """Remove the volumes the kit's ImagePrepare and ImportDisk checks left
    in the daemon's pool (no RPC deletes them; its VMs it deletes itself),
    with the records of their sources."""
    import libvirt
    from vm_provider_libvirt import storage

    conn = libvirt.open(libvirtd_uri())
    try:
        pool = conn.storagePoolLookupByName("default")
        pool.refresh(0)
        for vol in pool.listAllVolumes(0):
            if vol.name().startswith(prefix):
                storage.delete(vol)
    finally:
        conn.close()
