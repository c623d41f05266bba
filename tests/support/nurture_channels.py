"""Helpers for the nurture channel tests: a DKIM key pair and its DNS record."""

from __future__ import annotations

import base64
import functools
import subprocess
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class DkimKeyPair:
    private_pem: bytes
    dns_record: bytes
    """The TXT record a receiver would find at <selector>._domainkey.<domain>."""

    def dns(self, expected_name: bytes) -> Callable[..., bytes | None]:
        """A `dnsfunc` for dkim.verify answering only for `expected_name`."""

        def lookup(name: bytes, timeout: int = 5) -> bytes | None:
            return self.dns_record if name == expected_name else None

        return lookup


@functools.cache
def dkim_key_pair() -> DkimKeyPair:
    """A fresh 2048-bit RSA key (openssl: no Python crypto package is installed)."""
    private = subprocess.run(["openssl", "genrsa", "2048"], check=True, capture_output=True).stdout
    public_der = subprocess.run(
        ["openssl", "rsa", "-pubout", "-outform", "DER"],
        input=private,
        check=True,
        capture_output=True,
    ).stdout
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public_der)
    return DkimKeyPair(private, record)
