"""Fetching URL images: the one place the simulation touches the network.

Images are streamed, hashed and counted, never stored: the simulation only
needs to know that the URL answers, that the bytes match the checksum and
how big the image is.
"""

from __future__ import annotations

import hashlib
import math
import urllib.error
import urllib.request

from .hypervisor import SimError

CHUNK = 1 << 20
TIMEOUT = 30.0


class DownloadError(SimError):
    """The URL could not be fetched."""


class ChecksumMismatchError(SimError):
    """The bytes fetched do not match the expected digest."""


def fetch(url: str, checksum: str = "", checksum_type: str = "sha256") -> int:
    """Fetch ``url`` (http or https), verify ``checksum`` when given, and
    return the image's size in GiB (at least 1)."""
    digest = hashlib.new(checksum_type)
    size = 0
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:  # noqa: S310 - the core allows only http(s) URLs
            while chunk := resp.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"fetching the image failed: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"fetching the image failed: {reason}") from exc
    if checksum and digest.hexdigest() != checksum.lower():
        raise ChecksumMismatchError(f"the image's {checksum_type} is {digest.hexdigest()}, the request says {checksum.lower()}")
    return max(1, math.ceil(size / 2**30))
