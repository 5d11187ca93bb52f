"""The Proxmox node's shell over SSH (paramiko): what the data path runs
on a node, since the Proxmox API streams no disk out of or into a storage.

A node is reached at ``ssh_hosts[node]`` (default: its name) on
``ssh_port`` as ``ssh_user``, logging in with ``ssh_key_file`` only (no
agent, no other keys). Its host key must be in ``ssh_known_hosts_file``;
an unknown host is refused and nothing is ever added to the file (no trust
on first use), a different key is refused. Commands are argument lists,
quoted for the remote shell here and nowhere else; one that stays silent
(no output, no room for input) longer than ``task_timeout_seconds`` fails
as UNAVAILABLE. Failures map through
:func:`vm_provider_proxmox.errors.from_ssh`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shlex
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import paramiko

from provider_core import FailedPrecondition, ProviderError, Unavailable

from .errors import from_ssh
from .settings import ProxmoxSettings

log = logging.getLogger(__name__)
STDERR_TAIL = 400
CHUNK = 1 << 20
#: Seconds a command whose input was cut short gets to exit.
END_WAIT = 30.0
#: Ciphers offered first: AES-GCM authenticates while it decrypts, where
#: paramiko's default (aes128-ctr) adds an HMAC over every packet in
#: Python; a 300 MiB stream costs about a third less CPU of the provider's.
#: Every other cipher paramiko offers follows, for nodes without these.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


class CommandFailed(FailedPrecondition):
    """A command on the node exited with another status than 0."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class NodeShell:
    """Opens :class:`Session` s to the nodes of the cluster."""

    def __init__(self, settings: ProxmoxSettings) -> None:
        self.settings = settings

    @property
    def configured(self) -> bool:
        return self.settings.ssh_key_file is not None and self.settings.ssh_known_hosts_file is not None

    @contextlib.contextmanager
    def session(self, node: str) -> Iterator[Session]:
        s = self.settings
        if s.ssh_key_file is None or s.ssh_known_hosts_file is None:
            raise FailedPrecondition("the node data path needs ssh_key_file and ssh_known_hosts_file")
        for setting, path in (("ssh_key_file", s.ssh_key_file), ("ssh_known_hosts_file", s.ssh_known_hosts_file)):
            _check_readable(setting, path)
        host = s.ssh_hosts.get(node, node)
        where = f"node {node} ({host}:{s.ssh_port})"
        client = paramiko.SSHClient()
        try:
            client.load_host_keys(str(s.ssh_known_hosts_file))  # this file only; never saved
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            client.connect(
                host,
                port=s.ssh_port,
                username=s.ssh_user,
                key_filename=str(s.ssh_key_file),
                passphrase=s.ssh_key_passphrase.get_secret_value() if s.ssh_key_passphrase else None,
                allow_agent=False,
                look_for_keys=False,
                timeout=s.request_timeout,
                banner_timeout=s.request_timeout,
                auth_timeout=s.request_timeout,
                transport_factory=_transport,
            )
        except (paramiko.SSHException, OSError) as exc:
            client.close()
            raise from_ssh(exc, where) from None
        try:
            yield Session(client, node, where, s.task_timeout_seconds)
        finally:
            client.close()


def _transport(sock: Any, **kwargs: Any) -> paramiko.Transport:
    """paramiko's transport with :data:`PREFERRED_CIPHERS` first, and
    without Nagle's delay: each command is a few small messages answered
    one by one, which otherwise wait ~40 ms for a delayed acknowledgement."""
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport = paramiko.Transport(sock, **kwargs)
    options = transport.get_security_options()
    offered = tuple(options.ciphers)
    options.ciphers = (*(c for c in PREFERRED_CIPHERS if c in offered), *(c for c in offered if c not in PREFERRED_CIPHERS))
    return transport


class Session:
    """One SSH connection to a node."""

    def __init__(self, client: paramiko.SSHClient, node: str, where: str, timeout: float) -> None:
        self.client = client
        self.node = node
        self.where = where
        self.timeout = timeout
        """Longest silence of a command (no output, no room for input)."""

    def _exec(self, argv: list[str]) -> paramiko.Channel:
        transport = self.client.get_transport()
        if transport is None:
            raise from_ssh(paramiko.SSHException("the connection is closed"), self.where)
        try:
            channel = transport.open_session()
            channel.settimeout(self.timeout)
            channel.exec_command(shlex.join(argv))
        except (paramiko.SSHException, OSError) as exc:
            raise from_ssh(exc, self.where) from None
        return channel

    def _finish(self, channel: paramiko.Channel, argv: list[str], check: bool) -> int:
        if not channel.status_event.wait(self.timeout):  # recv_exit_status would wait for ever
            channel.close()
            raise Unavailable(f"{argv[0]} on {self.where} did not exit within {self.timeout:g}s (task_timeout_seconds)")
        status = int(channel.recv_exit_status())
        err = b""
        while channel.recv_stderr_ready():
            err += channel.recv_stderr(65536)
        channel.close()
        if status != 0 and check:
            text = err.decode(errors="replace").strip()[-STDERR_TAIL:] or f"exit status {status}"
            raise CommandFailed(f"{argv[0]} on {self.where} failed: {text}", status)
        return status

    def run(self, argv: list[str], *, check: bool = True, stdin: bytes | None = None) -> str:
        """Run a command; its standard output (small: read whole). ``stdin``
        is its whole input: what must not show on its command line."""
        channel = self._exec(argv)
        try:
            if stdin is not None:
                channel.sendall(stdin)
                channel.shutdown_write()
            out = b"".join(iter(lambda: channel.recv(65536), b""))
        except (TimeoutError, paramiko.SSHException, OSError) as exc:
            raise from_ssh(exc, self.where) from None
        self._finish(channel, argv, check)
        return out.decode(errors="replace")

    def sha256(self, path: str) -> str:
        """The SHA256 of a file on the node (``sha256sum``)."""
        return self.run(["sha256sum", path]).split()[0]

    def size(self, path: str) -> int:
        """The size of a file on the node in bytes (``stat``)."""
        return int(self.run(["stat", "-c", "%s", path]).strip())

    def status(self, argv: list[str]) -> int:
        """Run a command; its exit status."""
        return self._finish(self._exec(argv), argv, check=False)

    def cleanup(self, argv: list[str]) -> None:
        """Run a command that removes what a failed or finished step left;
        never raises (the step's own error matters more), logs a failure."""
        try:
            if self.status(argv) != 0:
                log.warning("%s on %s failed: remove %s by hand", argv[0], self.where, argv[-1])
        except ProviderError as exc:
            log.warning("%s on %s failed (%s): remove %s by hand", argv[0], self.where, exc, argv[-1])

    @contextlib.contextmanager
    def reading(self, argv: list[str]) -> Iterator[BinaryIO]:
        """A command's standard output as a file to read in chunks; its exit
        status is checked once the block ends."""
        channel = self._exec(argv)
        f: Any = _Reader(channel)
        try:
            yield f
        except (paramiko.SSHException, OSError) as exc:
            channel.close()
            raise from_ssh(exc, self.where) from None
        except BaseException:
            channel.close()
            raise
        self._finish(channel, argv, check=True)

    @contextlib.contextmanager
    def writing(self, argv: list[str]) -> Iterator[BinaryIO]:
        """A command's standard input as a file to write in chunks; closed
        (end of file) and its exit status checked once the block ends. When
        the block fails, the command still gets its end of file and is
        waited for, so that nothing it writes appears after the caller
        removed it."""
        channel = self._exec(argv)
        f: Any = _Writer(channel)
        try:
            yield f
            channel.shutdown_write()
        except BaseException as exc:
            _end_input(channel)  # what it wrote is complete before the caller cleans up
            if isinstance(exc, paramiko.SSHException | OSError):
                if channel.exit_status_ready() and channel.recv_exit_status() != 0:
                    self._finish(channel, argv, check=True)  # its own error (e.g. a full disk) says more
                channel.close()
                raise from_ssh(exc, self.where) from None
            channel.close()
            raise
        self._finish(channel, argv, check=True)


def _check_readable(setting: str, path: Path) -> None:
    """Refuse, before any connection, a file of the data path this process
    cannot read. In a pod this is a Secret's file of root with mode 0400
    (or 0600) while the provider runs as another UID (65532, or whatever
    UID OpenShift assigns) and the pod has no fsGroup giving it the file's
    group: the operator's files must change, so FAILED_PRECONDITION naming
    the file, its mode and owner, and who the process is."""
    try:
        with path.open("rb"):
            pass
    except PermissionError:
        groups = ",".join(str(g) for g in sorted({os.getgid(), *os.getgroups()}))
        try:
            st = path.stat()
            what = f"it is mode {stat.S_IMODE(st.st_mode):04o} of {st.st_uid}:{st.st_gid}"
        except OSError:
            what = "its directory cannot be searched"
        raise FailedPrecondition(
            f"{setting} {path} cannot be read by UID {os.getuid()} (groups {groups}): {what}; give the pod "
            "the file's group (with an fsGroup the kubelet makes a Secret's files 0440 of it) or keep the "
            "Secret's default mode (0644)"
        ) from None
    except OSError as exc:
        raise FailedPrecondition(f"{setting} {path}: cannot read it: {exc.strerror}") from None


def _end_input(channel: paramiko.Channel) -> None:
    """End a command's input and wait (a while) for it to exit."""
    with contextlib.suppress(paramiko.SSHException, OSError):
        channel.shutdown_write()
        channel.status_event.wait(END_WAIT)


class _Reader(io.RawIOBase):
    """A channel's output as a raw file: each read returns what has arrived
    (short reads; paramiko's buffered file copies its buffer on every
    packet, which makes large reads slow)."""

    def __init__(self, channel: paramiko.Channel) -> None:
        self.channel = channel

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return bytes(self.channel.recv(size if size > 0 else CHUNK))

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _Writer(io.RawIOBase):
    """A channel's input as a raw file (each write sends it all)."""

    def __init__(self, channel: paramiko.Channel) -> None:
        self.channel = channel

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.channel.sendall(data)
        return len(data)


__all__ = ["CommandFailed", "NodeShell", "Session"]
