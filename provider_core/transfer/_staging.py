"""Staging directories mounted into the provider: ``pvc://`` and ``nfs://``.

VirtRigaud's manager mounts each migration claim at ``<pvc_root>/<claim>``
and may mount an NFS export at ``<nfs_root>`` (``[server]`` settings,
:func:`provider_core.urls.set_roots`):

- ``pvc://<claim>/<path>`` is ``<pvc_root>/<claim>/<path>``; the claim's
  directory must exist (a claim that is not mounted is not written into the
  provider's own file system);
- ``nfs://<server><export>/<path>`` is ``<nfs_root>/<path>``: the URL's
  path less the ``export`` storage option.

A file never lies outside its root, even when others write into the
claim at the same time: URLs with ``.`` or ``..`` segments are refused when
the request is validated, and the file is reached by opening each directory
relative to the one before it without following symbolic links, from the
claim's own directory (or the nfs root) down to the file itself. A symbolic
link anywhere on the way (the claim's directory included) is refused, and so
is a final name that is not a regular file (a FIFO, a device, a directory):
InvalidArgument naming the URL's field. Missing directories inside the root
are created. A write goes to a hidden neighbour in the same directory, is
synced and renamed at the end: readers never see a partial file. Reads
stream the file like a download (hashed, and verified against an expected
checksum by the caller).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
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
from ._common import CHUNK, Hasher, UploadResult

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


#: Opening a directory on the way: never through a link, never blocking.
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_LINK = "leaves the staging directory through a symbolic link"


@dataclass
class Place:
    """An open directory inside a staging root and the file name in it;
    a context manager closing the directory."""

    dir_fd: int
    name: str
    url_field: str

    def __enter__(self) -> Place:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.dir_fd)


def resolve(url: str, export: str, *, create: bool, url_field: str) -> Place:
    """The directory and name of the file a staging URL names (see the
    module doc); with ``create`` the directories on the way are made.
    Raises Unimplemented when its root is not configured,
    FailedPrecondition when a claim is not mounted, NotFound for a missing
    directory (reading), InvalidArgument for a URL that leaves its root."""
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
        root = roots.pvc
        claim = parts.hostname or ""
    else:
        if roots.nfs is None:
            raise Unimplemented("nfs staging is not configured here ([server] nfs_root)")
        skip = [s for s in export.strip("/").split("/") if s]
        if not export.startswith("/") or segments[: len(skip)] != skip:
            raise InvalidArgument.field("storage_options_json", f"export {export!r} is not where the URL's path starts")
        segments = segments[len(skip) :]
        root = roots.nfs
        claim = ""
    if not segments or any(s in ("", ".", "..") or "/" in s or "\0" in s for s in segments):
        raise InvalidArgument.field(url_field, "names no file inside the staging directory")
    return _walk(root, claim, segments, create=create, url_field=url_field, what=f"staging path {urls.redact(url)}")


def _walk(root: Path, claim: str, segments: list[str], *, create: bool, url_field: str, what: str) -> Place:
    """Open ``root``, then ``claim`` (when given) and each directory of
    ``segments`` but the last, each in the one before, never through a link."""
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the configured root may be a link
    except OSError as exc:
        raise fs_error(exc, f"staging root {root}") from None
    try:
        if claim:
            try:
                fd = _step(fd, claim, url_field)
            except (NotFound, InvalidArgument) as exc:
                if isinstance(exc, InvalidArgument) and exc.violations:
                    raise  # a link: refused as leaving the root
                raise FailedPrecondition(f"claim {claim!r} is not mounted at {root / claim}") from None
        for name in segments[:-1]:
            if create:
                try:
                    os.mkdir(name, dir_fd=fd)
                except FileExistsError:
                    pass  # a directory, a link or a file: opening it tells
                except OSError as exc:
                    raise fs_error(exc, what) from None
            fd = _step(fd, name, url_field, what)
    except BaseException:
        os.close(fd)
        raise
    return Place(fd, segments[-1], url_field)


def _step(fd: int, name: str, url_field: str, what: str = "") -> int:
    """Open directory ``name`` in ``fd`` without following a link, close
    ``fd`` and return the new one."""
    try:
        step = os.open(name, _DIR, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                st = None
            if st is not None and stat.S_ISLNK(st.st_mode):
                raise InvalidArgument.field(url_field, _LINK) from None
            raise InvalidArgument(f"{what or 'staging path'}: {name!r} is not a directory") from None
        raise fs_error(exc, what or f"staging directory {name!r}") from None
    os.close(fd)
    return step


def _not_regular(place: Place, mode: int) -> InvalidArgument:
    if stat.S_ISLNK(mode):
        return InvalidArgument.field(place.url_field, _LINK)
    return InvalidArgument.field(place.url_field, "names something that is not a regular file")


def write(hasher: Hasher, place: Place, what: str) -> UploadResult:
    """Stream ``hasher``'s source into the file at ``place``, which appears
    only complete: written under a hidden temporary name in the same
    directory, synced, then renamed over the name (a link or anything but a
    regular file there is refused, and a rename never follows one)."""
    try:
        st = os.stat(place.name, dir_fd=place.dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise fs_error(exc, what) from None
    else:
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(place, st.st_mode)
    part = f".{place.name}.{uuid.uuid4().hex[:12]}.part"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(part, flags, 0o640, dir_fd=place.dir_fd)
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
        os.rename(part, place.name, src_dir_fd=place.dir_fd, dst_dir_fd=place.dir_fd)
        os.fsync(place.dir_fd)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part, dir_fd=place.dir_fd)
        if isinstance(exc, OSError):
            raise fs_error(exc, what) from None
        raise
    return hasher.result()


def open_file(place: Place, what: str) -> BinaryIO:
    """Open the regular file at ``place`` for reading: never through a
    link, never blocking on a FIFO (anything but a regular file is
    refused)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(place.name, flags, dir_fd=place.dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InvalidArgument.field(place.url_field, _LINK) from None
        raise fs_error(exc, what) from None
    f = os.fdopen(fd, "rb")
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode):
            os.set_blocking(fd, True)
            return f
    except OSError as exc:
        f.close()
        raise fs_error(exc, what) from None
    f.close()
    raise _not_regular(place, mode)


def read(f: BinaryIO, what: str) -> Iterator[bytes]:
    """The bytes of the open file ``f`` in chunks; closes it."""
    with f:
        while True:
            try:
                chunk = f.read(CHUNK)
            except OSError as exc:
                raise fs_error(exc, what) from None
            if not chunk:
                return
            yield chunk
