"""Staging directories mounted into the provider: ``pvc://`` and ``nfs://``.

VirtRigaud's manager mounts each migration claim at ``<pvc_root>/<claim>``
and may mount an NFS export at ``<nfs_root>`` (``[server]`` settings,
:func:`provider_core.urls.set_roots`):

- ``pvc://<claim>/<path>`` is ``<pvc_root>/<claim>/<path>``; the claim's
  directory must exist (a claim that is not mounted is not written into the
  provider's own file system);
- ``nfs://<server><export>/<path>`` is ``<nfs_root>/<path>``: the URL's
  path less the ``export`` storage option.

A file never lies outside its root: URLs with ``.`` or ``..`` segments are
refused when the request is validated, and every directory on the way is
resolved and checked, so a symbolic link inside the root that points out of
it is refused too (InvalidArgument naming the URL's field). Missing
directories inside the root are created. A write goes to a hidden
neighbour, is synced and renamed at the end: readers never see a partial
file. Reads stream the file like a download (hashed, and verified against
an expected checksum by the caller).
"""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .. import urls
from ..errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ProviderError,
    ResourceExhausted,
    Unimplemented,
)
from ._common import CHUNK, Hasher, LocalIOError, UploadResult

#: errno of a failed file operation -> the core's error.
ERRNO: dict[int, type[ProviderError]] = {
    errno.ENOENT: NotFound,
    errno.ENOTDIR: NotFound,
    errno.EACCES: PermissionDenied,
    errno.EPERM: PermissionDenied,
    errno.EROFS: FailedPrecondition,
    errno.ENOSPC: ResourceExhausted,
    errno.EDQUOT: ResourceExhausted,
    errno.EISDIR: InvalidArgument,
}


def fs_error(exc: OSError, what: str) -> ProviderError:
    """The core error of a failed file operation (its reason, never its path)."""
    cls = ERRNO.get(exc.errno or 0, FailedPrecondition)
    return cls(f"{what}: {exc.strerror or type(exc).__name__}")


def resolve(url: str, export: str, *, create: bool, url_field: str) -> Path:
    """The file a staging URL names (see the module doc); with ``create``
    the directories on the way are made. Raises Unimplemented when its root
    is not configured, FailedPrecondition when a claim is not mounted,
    NotFound for a missing directory (reading), InvalidArgument for a URL
    that leaves its root."""
    try:
        urls.check_staging_url(url)
    except ValueError as exc:
        raise InvalidArgument.field(url_field, str(exc)) from None
    parts = urlsplit(url)
    segments = [unquote(s) for s in parts.path.split("/")[1:]]
    roots = urls.roots()
    if parts.scheme == "pvc":
        if roots.pvc is None:
            raise Unimplemented("pvc staging is not configured here ([server] pvc_root)")
        claim = roots.pvc / (parts.hostname or "")
        if not claim.is_dir():
            raise FailedPrecondition(f"claim {parts.hostname!r} is not mounted at {claim}")
        root = claim
    else:
        if roots.nfs is None:
            raise Unimplemented("nfs staging is not configured here ([server] nfs_root)")
        skip = [s for s in export.strip("/").split("/") if s]
        if not export.startswith("/") or segments[: len(skip)] != skip:
            raise InvalidArgument.field("storage_options_json", f"export {export!r} is not where the URL's path starts")
        segments = segments[len(skip) :]
        root = roots.nfs
    if not segments or any(s in ("", ".", "..") or "/" in s or "\0" in s for s in segments):
        raise InvalidArgument.field(url_field, "names no file inside the staging directory")
    return _inside(root, segments, create=create, url=url, url_field=url_field)


def _inside(root: Path, segments: list[str], *, create: bool, url: str, url_field: str) -> Path:
    base = root.resolve()
    here = base
    what = f"staging path {urls.redact(url)}"
    for name in segments[:-1]:
        step = here / name
        if create:
            try:
                step.mkdir()
            except FileExistsError:
                pass  # a directory, a link (checked below) or a file (fails below)
            except OSError as exc:
                raise fs_error(exc, what) from None
        real = step.resolve()
        if not real.is_relative_to(base):
            raise InvalidArgument.field(url_field, "leaves the staging directory through a symbolic link")
        if not real.is_dir():
            raise (NotFound if not real.exists() else InvalidArgument)(f"{what}: {name!r} is not a directory")
        here = real
    final = here / segments[-1]
    if final.is_symlink() and not final.resolve().is_relative_to(base):
        raise InvalidArgument.field(url_field, "leaves the staging directory through a symbolic link")
    return final


def write(hasher: Hasher, path: Path, what: str) -> UploadResult:
    """Stream ``hasher``'s source into ``path``, which appears only complete:
    written under a hidden temporary name, synced, then renamed."""
    part = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.part")
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
    except OSError as exc:
        raise fs_error(exc, what) from None
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in hasher:
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise fs_error(exc, what) from None
            out.flush()
            os.fsync(out.fileno())
        os.replace(part, path)
    except LocalIOError:
        part.unlink(missing_ok=True)
        raise
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise fs_error(exc, what) from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return hasher.result()


def read(path: Path, what: str) -> Iterator[bytes]:
    """The bytes of ``path`` in chunks."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the generator
    except OSError as exc:
        raise fs_error(exc, what) from None
    with f:
        while True:
            try:
                chunk = f.read(CHUNK)
            except OSError as exc:
                raise fs_error(exc, what) from None
            if not chunk:
                return
            yield chunk
