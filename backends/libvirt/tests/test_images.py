"""qemu-img wrappers on real images made with qemu-img and qemu-io."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from vm_provider_libvirt import images
from vmp_testplugins.skips import missing

from provider_core import errors

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-img") is None, reason=missing("qemu-img is not installed (testbed/install.sh)")
)

MiB = 1 << 20


def _qemu_img(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], check=True, capture_output=True, text=True).stdout


def _write(image: Path, *commands: str, fmt: str = "qcow2") -> None:
    args = ["qemu-io", "-f", fmt]
    for command in commands:
        args += ["-c", command]
    subprocess.run([*args, str(image)], check=True, capture_output=True)


def _same_content(a: Path, b: Path) -> bool:
    return subprocess.run(["qemu-img", "compare", "-U", str(a), str(b)], capture_output=True, check=False).returncode == 0


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    """A 64 MiB qcow2 with 5 MiB of data in two places."""
    path = tmp_path / "disk.qcow2"
    _qemu_img("create", "-f", "qcow2", str(path), "64M")
    _write(path, "write -P 0xab 0 4M", "write -P 0xcd 40M 1M")
    return path


def test_info(disk: Path) -> None:
    meta = images.info(disk)
    assert meta["format"] == "qcow2"
    assert meta["virtual-size"] == 64 * MiB
    assert 5 * MiB <= meta["actual-size"] < 8 * MiB


@pytest.mark.parametrize(
    ("fmt", "compress", "kind"),
    [
        ("qcow2", False, None),
        ("qcow2", True, "zstd"),
        ("raw", False, None),
        ("vmdk", False, "monolithicSparse"),
        ("vmdk", True, "streamOptimized"),
    ],
)
def test_convert_keeps_the_content(tmp_path: Path, disk: Path, fmt: str, compress: bool, kind: str | None) -> None:
    out = tmp_path / f"out.{fmt}"
    images.convert(disk, out, fmt, compress=compress, src_fmt="qcow2")
    meta = images.inspect(out, fmt)
    assert meta["format"] == fmt
    assert _same_content(disk, out)
    data = meta.get("format-specific", {}).get("data", {})
    if fmt == "qcow2" and compress:
        assert data["compression-type"] == kind
        assert out.stat().st_size < disk.stat().st_size / 10, "patterned data should compress"
    if fmt == "vmdk":
        assert data["create-type"] == kind
    assert images.check(out, fmt).ok


def test_raw_cannot_be_compressed(tmp_path: Path, disk: Path) -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        images.convert(disk, tmp_path / "x.raw", "raw", compress=True)
    assert info.value.violations == (("compress", "a raw image cannot be compressed; use qcow2 or vmdk"),)


def test_unknown_output_format(tmp_path: Path, disk: Path) -> None:
    with pytest.raises(errors.InvalidArgument, match="'vdi' is not supported"):
        images.convert(disk, tmp_path / "x", "vdi")


def test_convert_an_internal_snapshot(tmp_path: Path, disk: Path) -> None:
    before = tmp_path / "before.qcow2"
    shutil.copy(disk, before)
    _qemu_img("snapshot", "-c", "snap-1", str(disk))
    _write(disk, "write -P 0xee 0 1M")
    out = tmp_path / "at-snap.raw"
    images.convert(disk, out, "raw", snapshot="snap-1")
    assert _same_content(before, out)
    assert not _same_content(disk, out)
    with pytest.raises(errors.NotFound, match="snapshot"):
        images.convert(disk, tmp_path / "none.raw", "raw", snapshot="no-such-snapshot")


def test_convert_flattens_a_backing_chain(tmp_path: Path, disk: Path) -> None:
    overlay = tmp_path / "overlay.qcow2"
    _qemu_img("create", "-f", "qcow2", "-b", str(disk), "-F", "qcow2", str(overlay))
    _write(overlay, "write -P 0x11 8M 1M")
    out = tmp_path / "flat.qcow2"
    images.convert(overlay, out, "qcow2")
    assert "backing-filename" not in images.info(out)
    assert _same_content(overlay, out)


def test_missing_image_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(errors.NotFound, match="No such file"):
        images.info(tmp_path / "absent.qcow2")


# -- untrusted images ------------------------------------------------------------------


def test_inspect_refuses_a_backing_file(tmp_path: Path, disk: Path) -> None:
    evil = tmp_path / "evil.qcow2"
    _qemu_img("create", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw", str(evil), "64M")
    with pytest.raises(errors.InvalidArgument, match="backing file"):
        images.inspect(evil, "qcow2")
    with pytest.raises(errors.InvalidArgument, match="backing file"):
        images.inspect(evil)


@pytest.mark.parametrize("inner", ["qcow2", "vmdk", "vdi"])
def test_inspect_refuses_a_raw_image_that_looks_like_another_format(tmp_path: Path, inner: str) -> None:
    """libvirt probes pool files: a "raw" volume holding a qcow2 header with
    a backing file would be listed as qcow2 backed by a host file."""
    disguised = tmp_path / "disk.img"
    if inner == "qcow2":
        _qemu_img("create", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw", str(disguised), "16M")
    else:
        _qemu_img("create", "-f", inner, str(disguised), "16M")
    with pytest.raises(errors.InvalidArgument, match=f"given as raw but holds a {inner} image"):
        images.inspect(disguised, "raw")


def test_inspect_takes_an_iso_as_raw(tmp_path: Path) -> None:
    from vm_provider_libvirt.cloudinit import build_nocloud_iso

    iso = tmp_path / "seed.iso"
    iso.write_bytes(build_nocloud_iso(b"#cloud-config\n", b"", None))
    assert images.inspect(iso, "raw")["format"] == "raw"
    assert images.inspect(iso)["format"] == "raw"


def test_inspect_refuses_an_external_data_file(tmp_path: Path) -> None:
    evil = tmp_path / "evil.qcow2"
    _qemu_img("create", "-f", "qcow2", "-o", f"data_file={tmp_path / 'data.raw'}", str(evil), "16M")
    with pytest.raises(errors.InvalidArgument, match="external data file"):
        images.inspect(evil, "qcow2")


def test_inspect_refuses_a_vmdk_with_extents_elsewhere(tmp_path: Path) -> None:
    evil = tmp_path / "evil.vmdk"
    _qemu_img("create", "-f", "vmdk", "-o", "subformat=monolithicFlat", str(evil), "16M")
    with pytest.raises(errors.InvalidArgument, match="monolithicFlat"):
        images.inspect(evil, "vmdk")


def test_inspect_checks_the_declared_format(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00not an image" * 1000)
    with pytest.raises(errors.InvalidArgument, match="not in qcow2 format"):
        images.inspect(junk, "qcow2")
    assert images.inspect(junk, "raw")["format"] == "raw"
    assert images.inspect(junk)["format"] == "raw"


def test_inspect_refuses_other_formats(tmp_path: Path) -> None:
    vdi = tmp_path / "disk.vdi"
    _qemu_img("create", "-f", "vdi", str(vdi), "16M")
    with pytest.raises(errors.InvalidArgument, match="'vdi' is not supported"):
        images.inspect(vdi)


def test_check_finds_corruption(tmp_path: Path, disk: Path) -> None:
    assert images.check(disk, "qcow2") == images.CheckResult()
    assert images.check(disk, "raw") == images.CheckResult(supported=False)
    broken = tmp_path / "broken.qcow2"
    shutil.copy(disk, broken)
    with broken.open("r+b") as f:
        f.seek(48)  # refcount_table_offset in the qcow2 header
        (table,) = struct.unpack(">Q", f.read(8))
        f.seek(table)
        (block,) = struct.unpack(">Q", f.read(8))
        f.seek(block)
        f.write(b"\x00" * 4096)  # every cluster now claims refcount 0
    result = images.check(broken, "qcow2")
    assert not result.ok
    assert result.corruptions > 0
