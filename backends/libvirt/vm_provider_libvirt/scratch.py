"""Scratch files of the disk data path: downloads and ``qemu-img``
conversions, in ``settings.download_dir`` (default: the system temp dir).

How much room each operation needs is said in :mod:`.datapath`. Every
scratch file is removed when its block ends, whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from provider_core import ResourceExhausted


def directory(setting: Path | None) -> Path:
    """The scratch directory (made when missing)."""
    where = setting or Path(tempfile.gettempdir())
    where.mkdir(parents=True, exist_ok=True)
    return where


def check_space(setting: Path | None, needed: int) -> None:
    """ResourceExhausted when the scratch directory has less than
    ``needed`` bytes free."""
    where = directory(setting)
    free = shutil.disk_usage(where).free
    if needed > free:
        raise ResourceExhausted(f"scratch space {where} has {free} bytes free; the conversion needs about {needed}")


@contextlib.contextmanager
def file(setting: Path | None, suffix: str) -> Iterator[Path]:
    """A new scratch file, removed at exit whatever happens."""
    fd, name = tempfile.mkstemp(prefix=".vmp-", suffix=suffix, dir=directory(setting))
    os.close(fd)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


__all__ = ["check_space", "directory", "file"]
