"""Fetching URL images: the one place the simulation touches the network.

Images are streamed, hashed and counted, never stored: the simulation only
needs to know that the URL answers, that the bytes match the checksum and
how big the image is. The fetch goes through the core's transfer code, so
the URL policy (no loopback, link-local or private addresses unless the
operator allows them, redirects included), the error table and the
redaction of URLs in messages are the core's.
"""

from __future__ import annotations

import math
import os

from provider_core import transfer


def fetch(url: str, checksum: str = "", checksum_type: str = "sha256") -> int:
    """Fetch ``url`` (http or https), verify ``checksum`` when given, and
    return the image's size in GiB (at least 1). Raises the core's errors
    (InvalidArgument naming ``image_json.URL`` or ``image_json.Checksum``,
    Unavailable, NotFound ...)."""
    with open(os.devnull, "wb") as sink:
        result = transfer.download(
            url,
            sink,
            expected=checksum,
            algorithm=checksum_type,
            url_field="image_json.URL",
            checksum_field="image_json.Checksum",
        )
    return max(1, math.ceil(result.size / 2**30))
