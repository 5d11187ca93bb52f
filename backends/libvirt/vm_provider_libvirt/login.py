"""How the backend logs in to libvirt: the URI libvirt is given and the
answers to libvirt's questions (settings ``ssh_key_file``,
``ssh_known_hosts_file``, ``username``, ``password``).

Without these settings the ``uri`` setting is opened as it is
(``libvirt.open``), as always.

With them, an SSH URI (``qemu+ssh://``, ``qemu+libssh://``,
``qemu+libssh2://``) is opened so that the given key logs in and the host
is verified against the given known_hosts file only:

- ``qemu+ssh://`` (OpenSSH's client, which takes no known_hosts file and
  needs a home directory) becomes ``qemu+libssh2://``, libvirt's client on
  libssh2; ``libssh``/``libssh2`` spellings stay as written. Why libssh2
  and not libssh: with libvirt 9.0 and libssh 0.10, every reply larger than
  a few kilobytes (host capabilities, domain XML) waits for the next wake-up
  of the event loop, 5 s (the keepalive interval), and without a running
  event loop it never returns (measured; apparently libvirt waits on the
  socket while libssh holds the data already). libssh2 1.10 cannot sign
  with RSA keys the way OpenSSH 8.8 and later accept (SHA-2); use an
  Ed25519 or ECDSA key there, or write ``qemu+libssh://``;
- the query gets ``keyfile``, ``known_hosts``, ``known_hosts_verify=normal``
  and ``sshauth`` (``privkey`` with a key; ``password`` and
  ``keyboard-interactive`` with a password; with neither, libvirt's own
  default, which includes ``agent``), each only when the URI does not say
  it already;
- ``username`` goes into the URI when it names no user.

With ``known_hosts_verify=normal`` libvirt asks, through the credentials
callback, whether to accept a host key the file does not hold; the answer
here is always no, so an unknown host is refused and nothing is ever
written to the file. A key that differs from the stored one is refused by
libvirt itself. The password is handed over only through the callback
(an SSH password or keyboard-interactive prompt, the passphrase of an
encrypted key, a SASL password), never in the URI.

This is the one place the URI is rewritten. Logs and errors name the
``uri`` setting as written, credentials masked
(:func:`~vm_provider_libvirt.connection.safe_uri`).
"""

from __future__ import annotations

import base64
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import libvirt
from pydantic import SecretStr

from provider_core import FailedPrecondition, ProviderError

from .settings import LibvirtSettings

log = logging.getLogger(__name__)

SSH_TRANSPORTS = frozenset({"ssh", "libssh", "libssh2"})
"""URI transports that are SSH (``driver+transport://``)."""

_HOST_KEY_PROMPT = "accept ssh host key"
"""How libvirt's SSH transports start the question whether to trust an unknown host key."""

_ASKED = [
    libvirt.VIR_CRED_AUTHNAME,
    libvirt.VIR_CRED_PASSPHRASE,
    libvirt.VIR_CRED_NOECHOPROMPT,
    libvirt.VIR_CRED_ECHOPROMPT,
]


def transport(uri: str) -> str:
    """The transport of a libvirt URI (``qemu+ssh://`` -> ``ssh``; "" for none)."""
    return urlsplit(uri).scheme.partition("+")[2]


RSA_OVER_LIBSSH2 = (
    "an RSA key: libssh2 before 1.11 signs only with SHA-1, which OpenSSH 8.8 and later refuse; "
    "use an Ed25519 or ECDSA key, or a qemu+libssh:// URI"
)


def _is_rsa(path: Path) -> bool:
    """Whether the private key file holds an RSA key: PEM says so in its
    header, OpenSSH's format in the public key it carries unencrypted."""
    try:
        text = path.read_text("ascii", errors="ignore")
    except OSError:
        return False
    if "BEGIN RSA PRIVATE KEY" in text:
        return True
    body = "".join(line for line in text.splitlines() if line and not line.startswith("-----"))
    try:
        blob = base64.b64decode(body)
    except ValueError:
        return False
    return blob.startswith(b"openssh-key-v1\0") and b"\0\0\0\x07ssh-rsa" in blob[:512]


def _secret(value: SecretStr | None) -> str:
    """A password as read from a file: without its final line break."""
    return value.get_secret_value().rstrip("\r\n") if value is not None else ""


@dataclass
class Login:
    """What opening the ``uri`` setting takes. Build with :meth:`of`."""

    uri: str
    """The ``uri`` setting, as written (for logs, masked)."""
    target: str
    """The URI libvirt opens."""
    username: str = ""
    password: str = field(default="", repr=False)
    key_file: Path | None = None
    known_hosts: Path | None = None
    _refused: list[str] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def of(cls, settings: LibvirtSettings) -> Login:
        uri = settings.uri
        login = cls(
            uri=uri,
            target=uri,
            username=settings.username.strip(),
            password=_secret(settings.password),
            key_file=settings.ssh_key_file,
            known_hosts=settings.ssh_known_hosts_file,
        )
        if transport(uri) in SSH_TRANSPORTS:
            login.target = login._ssh_target()
        return login

    @property
    def uses_credentials(self) -> bool:
        return bool(self.username or self.password or self.key_file or self.known_hosts)

    @property
    def ssh(self) -> bool:
        return transport(self.target) in SSH_TRANSPORTS

    def _ssh_target(self) -> str:
        parts = urlsplit(self.uri)
        netloc = parts.netloc
        if self.username and "@" not in netloc:
            netloc = f"{quote(self.username, safe='')}@{netloc}"
        if not (self.key_file or self.known_hosts or self.password):
            return urlunsplit(parts._replace(netloc=netloc))
        driver, _, kind = parts.scheme.partition("+")
        scheme = f"{driver}+libssh2" if kind == "ssh" else parts.scheme
        query = parse_qsl(parts.query, keep_blank_values=True)
        given = {name for name, _ in query}
        methods = (["privkey"] if self.key_file else []) + (["password", "keyboard-interactive"] if self.password else [])
        wanted = {
            "keyfile": str(self.key_file) if self.key_file else "",
            "known_hosts": str(self.known_hosts) if self.known_hosts else "",
            "known_hosts_verify": "normal",
            "sshauth": ",".join(methods),
        }
        query += [(name, value) for name, value in wanted.items() if value and name not in given]
        if dict(query).get("known_hosts_verify") != "normal":
            log.warning("the uri setting turns off SSH host key checks (known_hosts_verify)")
        return urlunsplit((scheme, netloc, parts.path, urlencode(query, safe="/,:", quote_via=quote), parts.fragment))

    # -- opening -------------------------------------------------------------------

    def check(self) -> None:
        """The files the settings name can be read (FailedPrecondition
        naming the setting otherwise): a readable error before libvirt's."""
        for name, path in (("ssh_key_file", self.key_file), ("ssh_known_hosts_file", self.known_hosts)):
            if path is None:
                continue
            try:
                with path.open("rb") as f:
                    f.read(1)
            except OSError as exc:
                raise FailedPrecondition(f"setting {name}: cannot read {path}: {exc.strerror or exc}") from None

    def open(self) -> libvirt.virConnect:
        """Open the connection (raises libvirtError, see :meth:`explain`)."""
        if not self.uses_credentials:
            return libvirt.open(self.uri)
        self.check()
        with self._lock:
            self._refused.clear()
        return libvirt.openAuth(self.target, [_ASKED, self._answer, None], 0)

    def _answer(self, creds: list[list[object]], _opaque: object) -> int:
        """libvirt's credentials callback: each entry is ``[type, prompt,
        challenge, default, result]``; fill the results, 0 when all are."""
        for cred in creds:
            kind, prompt = cred[0], str(cred[1] or "")
            if kind == libvirt.VIR_CRED_AUTHNAME:
                cred[4] = self.username or cred[3] or ""
            elif kind in (libvirt.VIR_CRED_PASSPHRASE, libvirt.VIR_CRED_NOECHOPROMPT):
                if not self.password:
                    return -1
                cred[4] = self.password
            elif kind == libvirt.VIR_CRED_ECHOPROMPT and prompt.lower().startswith(_HOST_KEY_PROMPT):
                with self._lock:
                    self._refused.append(prompt)
                cred[4] = "n"  # never trust on first use
            else:
                return -1
        return 0

    def explain(self, error: ProviderError) -> ProviderError:
        """The error of a failed :meth:`open` (already through the error
        table), with the setting to look at."""
        if not self.ssh or not self.uses_credentials:
            return error
        with self._lock:
            refused = bool(self._refused)
        text = str(error)
        where = f"setting ssh_known_hosts_file = {self.known_hosts}" if self.known_hosts else "no ssh_known_hosts_file set"
        if refused:
            hint = f"the host's key is not in the known hosts ({where}); unknown host keys are refused, never added"
        elif "host key" in text.lower():
            hint = f"the host's key differs from the one in the known hosts ({where})"
        elif "passphrase" in text.lower() and not self.password:
            hint = f"setting ssh_key_file = {self.key_file} is encrypted: setting password gives its passphrase"
        elif "key" in text.lower() or "authenticat" in text.lower() or "denied" in text.lower():
            user = urlsplit(self.target).username or "(the local user)"
            hint = f"user {user}, setting ssh_key_file = {self.key_file}" if self.key_file else f"user {user}"
            if self.key_file and transport(self.target) == "libssh2" and _is_rsa(self.key_file):
                hint += f"; {RSA_OVER_LIBSSH2}"
        else:
            return error
        return type(error)(f"{text} ({hint})")


__all__ = ["SSH_TRANSPORTS", "Login", "transport"]
