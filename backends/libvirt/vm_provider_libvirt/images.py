"""qemu-img wrappers: inspect, convert and check disk images on this host.

Each function runs ``qemu-img`` once with a fixed argument list (never a
shell) and raises the core's errors, translated from qemu-img's message
through the one table ``_ERRORS``; a failure the table does not know raises
:class:`QemuImgFailed` (the core reports it as INTERNAL and logs it).

Images from outside (downloads, imports) are untrusted: :func:`inspect`
opens them with an explicit format, under ``prlimit`` memory and CPU limits
(a crafted header can make qemu-img allocate without bound), and refuses the
features that would make QEMU read other files of this host: a backing file,
a qcow2 external data file, or a vmdk whose extents live elsewhere.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provider_core import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ProviderError,
    ResourceExhausted,
)

QEMU_IMG = "qemu-img"
FORMATS = ("qcow2", "raw", "vmdk")
"""Formats this module writes, and accepts from outside."""

#: qcow2 compression. zstd compresses about ten times faster than zlib; its
#: images need QEMU >= 5.1 (2020) to read, which every maintained
#: distribution ships. Use "zlib" for older readers.
QCOW2_COMPRESSION = "zstd"

#: Limits for qemu-img on untrusted images (as OpenStack does): address
#: space and CPU seconds.
UNTRUSTED_LIMITS = ("--as=1073741824", "--cpu=60")

#: qemu-img's messages -> core errors, most specific first.
_ERRORS: list[tuple[re.Pattern[str], type[ProviderError]]] = [
    (re.compile(r"No space left on device|Disk quota exceeded"), ResourceExhausted),
    (re.compile(r'Failed to get (shared )?"?\w+"? lock'), FailedPrecondition),
    (re.compile(r"Can't find snapshot|Failed to load snapshot"), NotFound),
    (re.compile(r"Permission denied|Operation not permitted"), PermissionDenied),
    (re.compile(r"No such file or directory"), NotFound),
    (
        re.compile(r"not in \w+ format|Unknown driver|Invalid .*(header|magic|version)|Unsupported .*(version|feature)"),
        InvalidArgument,
    ),
]


class QemuImgFailed(Exception):
    """qemu-img failed in a way the error table does not know."""

    def __init__(self, args: list[str], returncode: int, stderr: str) -> None:
        super().__init__(f"{' '.join(args[:2])} exited with {returncode}: {stderr}")
        self.returncode = returncode
        self.stderr = stderr


def _last_line(stderr: str) -> str:
    lines = [line.removeprefix("qemu-img: ").strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _run(args: list[str], *, limits: tuple[str, ...] = (), ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
    cmd = [QEMU_IMG, *args]
    if limits and shutil.which("prlimit"):
        cmd = ["prlimit", *limits, "--", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    if proc.returncode in ok:
        return proc
    message = _last_line(proc.stderr)
    for pattern, cls in _ERRORS:
        if pattern.search(proc.stderr):
            raise cls(f"qemu-img {args[0]}: {message}")
    raise QemuImgFailed(cmd, proc.returncode, proc.stderr.strip())


def info(path: Path | str, *, fmt: str = "", force_share: bool = True, untrusted: bool = False) -> dict[str, Any]:
    """``qemu-img info`` as a dict (``format``, ``virtual-size``,
    ``actual-size``, ``backing-filename``, ``snapshots``, ...). ``fmt``
    avoids probing; ``force_share`` (-U) reads images a running VM holds."""
    args = ["info", "--output=json"]
    if fmt:
        args += ["-f", fmt]
    if force_share:
        args.append("-U")
    result: dict[str, Any] = json.loads(_run([*args, str(path)], limits=UNTRUSTED_LIMITS if untrusted else ()).stdout)
    return result


def inspect(path: Path, fmt: str = "") -> dict[str, Any]:
    """Info of an untrusted image, refusing what would read other host files.

    With ``fmt`` the image is opened as that format (InvalidArgument when it
    is not one); without, the format is probed and must be one of
    :data:`FORMATS`. An image given as raw must also probe as raw: a "raw"
    image holding a qcow2 (or other) header would be taken for that format
    by libvirt, which probes the volumes of its pools, and could then name
    a host file as its backing file.
    """
    meta = info(path, fmt=fmt, force_share=False, untrusted=True)
    found = str(meta.get("format", ""))
    if found not in FORMATS:
        raise InvalidArgument(f"image format {found!r} is not supported; use one of {', '.join(FORMATS)}")
    if fmt == "raw":
        probed = str(info(path, force_share=False, untrusted=True).get("format", ""))
        if probed != "raw":
            raise InvalidArgument(
                f"the image was given as raw but holds a {probed} image; give its real format (a raw image must not"
                " start with another format's header)"
            )
    if meta.get("backing-filename") or meta.get("full-backing-filename"):
        raise InvalidArgument("the image has a backing file; send a flattened image (qemu-img convert)")
    data = meta.get("format-specific", {}).get("data", {})
    if found == "qcow2" and data.get("data-file"):
        raise InvalidArgument("the qcow2 image has an external data file; send a self-contained image")
    if found == "vmdk":
        extents = data.get("extents", [])
        kind = data.get("create-type", "")
        own = Path(str(meta.get("filename", path))).name
        if kind not in ("monolithicSparse", "streamOptimized") or any(
            Path(str(e.get("filename", ""))).name != own for e in extents
        ):
            raise InvalidArgument(
                f"vmdk type {kind!r} keeps data in other files; send a monolithicSparse or streamOptimized vmdk"
            )
    return meta


@dataclass(frozen=True)
class CheckResult:
    corruptions: int = 0
    leaks: int = 0
    check_errors: int = 0
    supported: bool = True

    @property
    def ok(self) -> bool:
        """No corruption and no error (leaked clusters only waste space)."""
        return self.corruptions == 0 and self.check_errors == 0


def check(path: Path, fmt: str) -> CheckResult:
    """``qemu-img check`` of an image in format ``fmt`` (raw has nothing to
    check: ``supported`` is False)."""
    proc = _run(["check", "--output=json", "-f", fmt, str(path)], limits=UNTRUSTED_LIMITS[:1], ok=(0, 1, 2, 3, 63))
    if proc.returncode == 63:
        return CheckResult(supported=False)
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return CheckResult(check_errors=1)
    return CheckResult(
        corruptions=int(data.get("corruptions", 0)),
        leaks=int(data.get("leaks", 0)),
        check_errors=int(data.get("check-errors", 0)) + (1 if proc.returncode == 1 else 0),
    )


def convert_args(fmt: str, *, compress: bool = False) -> list[str]:
    """Output options of ``qemu-img convert`` for ``fmt``."""
    if fmt not in FORMATS:
        raise InvalidArgument.field("format", f"format {fmt!r} is not supported; use one of {', '.join(FORMATS)}")
    args = ["-O", fmt]
    if compress:
        if fmt == "raw":
            raise InvalidArgument.field("compress", "a raw image cannot be compressed; use qcow2 or vmdk")
        args += ["-c", "-o", f"compression_type={QCOW2_COMPRESSION}" if fmt == "qcow2" else "subformat=streamOptimized"]
    else:
        args.append("-W")  # out-of-order writes: faster, not allowed with compression
    return args


def convert(
    src: Path | str,
    dst: Path,
    fmt: str,
    *,
    compress: bool = False,
    src_fmt: str = "",
    snapshot: str = "",
    force_share: bool = True,
) -> None:
    """Flatten ``src`` (with its backing chain, or its internal ``snapshot``)
    into a new image ``dst`` of format ``fmt``. ``dst`` is scratch: written
    without flushing (``-t unsafe``); the caller removes it. Needs space for
    the output: about the allocated data for raw (sparse) and qcow2, less
    when compressed."""
    args = ["convert", "-t", "unsafe", *convert_args(fmt, compress=compress)]
    if src_fmt:
        args += ["-f", src_fmt]
    if force_share:
        args.append("-U")
    if snapshot:
        args += ["-l", f"snapshot.name={snapshot}"]
    _run([*args, str(src), str(dst)])


def rebase_unsafe(path: Path, backing: Path, backing_fmt: str = "") -> None:
    """Point ``path`` at another copy of its backing image (``rebase -u``:
    metadata only, the data is not compared)."""
    args = ["rebase", "-u", "-b", str(backing)]
    if backing_fmt:
        args += ["-F", backing_fmt]
    _run([*args, str(path)])


__all__ = [
    "FORMATS",
    "QCOW2_COMPRESSION",
    "CheckResult",
    "QemuImgFailed",
    "check",
    "convert",
    "convert_args",
    "info",
    "inspect",
    "rebase_unsafe",
]
