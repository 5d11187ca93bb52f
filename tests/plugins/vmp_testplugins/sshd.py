"""A real OpenSSH server on 127.0.0.1 for tests (Debian's openssh-server).

:class:`Sshd` runs ``sshd`` on a free port with its own host key and
configuration in a temporary directory (started as root, as in CI), and
accepts the client keys it made for root: ``client_key`` (Ed25519),
``locked_key`` (passphrase :data:`PASSPHRASE`) and ``rsa_key``;
``stranger_key`` is refused. Private keys have no ``.pub`` beside them, as
in VirtRigaud's Secret. ``extra_config`` lines go into sshd_config (e.g.
``SetEnv PATH=...`` for commands a test provides).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from .skips import skip_missing

SSHD = Path("/usr/sbin/sshd")
PASSPHRASE = "correct horse battery staple"


def sshd_unavailable() -> str:
    """Why no sshd can run here ("" when it can)."""
    if os.geteuid() != 0:
        return "sshd is started as root (as in CI)"
    if not SSHD.exists() or shutil.which("ssh-keygen") is None:
        return "openssh-server is not installed (testbed/install.sh)"
    return ""


def skip_without_sshd() -> None:
    """Skip the running test, saying why, when no sshd can run here (a
    missing test bed part: a failure under ``VMP_REQUIRE_TESTBED=1``)."""
    __tracebackhide__ = True
    if reason := sshd_unavailable():
        skip_missing(f"needs an OpenSSH server: {reason}")


def keygen(path: Path, passphrase: str = "", kind: str = "ed25519") -> str:
    """A new key pair at ``path``; returns the public key line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", passphrase, "-C", path.name, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path.with_suffix(".pub").read_text().strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sshd:
    """An OpenSSH server on 127.0.0.1 accepting the client key (and the
    passphrase-protected one) for root; its log counts logins."""

    def __init__(self, tmp: Path, extra_config: str = "") -> None:
        self.dir = tmp
        self.extra_config = extra_config
        self.host_key = keygen(tmp / "host_ed25519")
        self.client_key = tmp / "client"
        self.locked_key = tmp / "locked"
        authorized = [keygen(self.client_key), keygen(self.locked_key, PASSPHRASE)]
        self.rsa_key = tmp / "rsa"
        authorized.append(keygen(self.rsa_key, kind="rsa"))
        self.stranger_key = tmp / "stranger"
        keygen(self.stranger_key)
        # VirtRigaud's Secret holds only the private key: no .pub beside it.
        for key in (self.client_key, self.locked_key, self.rsa_key, self.stranger_key):
            key.with_suffix(".pub").unlink()
        (tmp / "authorized_keys").write_text("\n".join(authorized) + "\n")
        self.log = tmp / "sshd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # its privilege separation directory
        for _ in range(5):
            self.port = free_port()
            config = self.dir / "sshd_config"
            config.write_text(
                f"ListenAddress 127.0.0.1:{self.port}\n"
                f"HostKey {self.dir / 'host_ed25519'}\n"
                f"AuthorizedKeysFile {self.dir / 'authorized_keys'}\n"
                "PermitRootLogin prohibit-password\n"
                "PasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\n"
                "UsePAM no\n"
                "StrictModes no\n"
                "PidFile none\n"
                "LogLevel VERBOSE\n" + self.extra_config
            )
            with self.log.open("ab") as log:
                self.proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stderr=log)
            end = time.monotonic() + 10
            while self.proc.poll() is None and time.monotonic() < end:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", self.port)) == 0:
                        return
                time.sleep(0.05)
            self.stop()  # the port was taken meanwhile: another one
        raise RuntimeError(f"sshd did not start:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def logins(self) -> int:
        return self.log.read_text().count("Accepted publickey")

    def known_hosts(self, name: str, key: str = "", host: str = "127.0.0.1") -> Path:
        """A known_hosts file listing ``host`` on this port with ``key``
        (default: this server's own host key)."""
        path = self.dir / name
        kind, blob = (key or self.host_key).split()[:2]
        path.write_text(f"[{host}]:{self.port} {kind} {blob}\n")
        return path


SharedSshd = Sshd
"""The name under which test modules that add their own settings import it."""
