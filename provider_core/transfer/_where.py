"""Where a transfer goes: a URL, or a request's URL with its credentials and storage options."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..models import ExportSpec, ImportSpec, StorageOptions
from ..urls import S3_KEYS

Target = str | ExportSpec | ImportSpec
"""A URL, or the request whose URL, credentials and storage options to use."""


@dataclass(frozen=True)
class Where:
    url: str
    credentials: dict[str, str]
    options: StorageOptions

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    def s3_credentials(self) -> dict[str, str]:
        """The credentials with the s3 options' endpoint and region where the
        credentials name none."""
        extra = {"endpoint_url": self.options.endpoint, "region": self.options.region}
        given = {S3_KEYS.get(k, k) for k in self.credentials}
        return {**self.credentials, **{k: v for k, v in extra.items() if v and k not in given}}


def where(target: Target, credentials: Mapping[str, str] | None) -> Where:
    if isinstance(target, ExportSpec):
        url, creds, options = target.destination_url, target.credentials, target.storage_options
    elif isinstance(target, ImportSpec):
        url, creds, options = target.source_url, target.credentials, target.storage_options
    else:
        url, creds, options = target, {}, StorageOptions()
    return Where(url, dict(creds if credentials is None else credentials), options)
