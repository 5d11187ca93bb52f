"""The ``vm-provider`` command.

vm-provider [serve] [--backend NAME] [--config FILE] [--listen HOST:PORT | --port N] [--health-port N] [--log-level LEVEL]
vm-provider config [--backend NAME] [--config FILE] [--listen HOST:PORT | --port N] [--health-port N] [--log-level LEVEL]
vm-provider backends [NAME ...] [--config FILE]
vm-provider conformance [--backend NAME] [--config FILE] [-k SUBSTR]

Exit status: 0 done; 1 a backend listed is broken (``backends``) or a
check failed (``conformance``); 2 a bad flag, file, setting or
environment variable, or a start that cannot happen (one line on standard
error naming what and what to do; never a traceback); 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import config as cfg
from . import logs, plugins
from .errors import ConfigError
from .launch import Launch, credentials
from .listening import tls_files
from .settings_report import Effective, render

log = logging.getLogger("vm_provider")


def _options(default: object) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The options of every command, and those of the serving commands."""
    common = argparse.ArgumentParser(add_help=False, argument_default=default)
    common.add_argument("--config", type=Path, help="plugins.toml (default: $VM_PROVIDER_CONFIG or ./plugins.toml)")
    serve = argparse.ArgumentParser(add_help=False, parents=[common], argument_default=default)
    serve.add_argument("--backend", help="backend to serve (default: $VM_PROVIDER_BACKEND, [provider] backend, else libvirt)")
    serve.add_argument("--listen", help="HOST:PORT to listen on (default 127.0.0.1:50051)")
    serve.add_argument("--port", type=_port, help="listen on this port on all interfaces ([::]:PORT); instead of --listen")
    serve.add_argument("--health-port", type=_port, help="serve HTTP /healthz and /readyz on this port, all interfaces")
    serve.add_argument("--log-level", type=str.upper, choices=["DEBUG", "INFO", "WARN", "WARNING", "ERROR"], help="default INFO")
    return common, serve


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    _, serve = _options(None)
    # A subcommand's options default to "absent", so that options given before
    # the subcommand (vm-provider --backend x serve) are not reset by it.
    common, sub_serve = _options(argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="vm-provider",
        description="Serve provider.v1.Provider on a hypervisor backend.",
        epilog="Exit status: 0 done, 1 a backend listed is broken or a conformance check failed, "
        "2 bad flags, settings or environment, or a start that cannot happen.",
        parents=[serve],
    )
    sub = parser.add_subparsers(dest="command", metavar="{serve,config,backends,conformance}")
    sub.add_parser("serve", parents=[sub_serve], help="serve the provider (the default)")
    sub.add_parser("config", parents=[sub_serve], help="print the effective settings (secrets masked) and where each came from")
    listing = sub.add_parser("backends", parents=[common], help="list installed backends and their capabilities")
    listing.add_argument("names", nargs="*", metavar="NAME", help="only these backends (exit 1 if one is missing or broken)")
    conf = sub.add_parser("conformance", parents=[sub_serve], help="run the conformance kit against a backend")
    conf.add_argument("-k", dest="select", help="only checks whose name contains this")
    return parser


def cmd_backends(names: Sequence[str]) -> int:
    installed = plugins.installed()
    if not installed:
        print("no backends installed")
        return 1
    status = 0
    for name in names or installed:
        if name not in installed:
            print(f"{name}: NOT INSTALLED{cfg.nearest(name, installed)}")
            status = 1
            continue
        try:
            cls = plugins.load_class(name)
        except ConfigError as exc:
            print(f"{name}: BROKEN: {exc}")
            status = 1
            continue
        caps = ", ".join(sorted(c.value for c in cls.capabilities)) or "(core operations only)"
        print(f"{name}: {caps}")
    return status


def effective(args: argparse.Namespace, conf: cfg.Config) -> Effective:
    """Every setting of the server and of the backend, validated, with its
    origin; refuses unknown tables, keys and VM_PROVIDER_* variables."""
    launched = Launch.from_environment()
    name, name_origin = cfg.backend_name(getattr(args, "backend", None), conf)
    installed = plugins.installed()
    for table in conf.backends:
        if table not in installed:
            hint = cfg.nearest(table, installed)
            raise ConfigError(f"{conf.source}: [backends.{table}]: no backend {table!r} is installed{hint}")
    cls = plugins.load_class(name)
    cfg.check_environment(os.environ, {"server": cfg.ServerSettings, name: cls.Settings}, [n for n in installed if n != name])
    flags = _server_flags(args)
    defaults = launched.server_defaults()
    named = set(flags) | set(conf.server) | {f for f in TLS_FILES if cfg.env_prefix("server") + f.upper() in os.environ}
    if named & set(TLS_FILES):  # TLS files named one by one replace the launched tls_dir
        defaults.pop("tls_dir", None)
    server = cfg.resolve(
        cfg.ServerSettings,
        "server",
        conf.server,
        flags=flags,
        source=conf.source,
        aliases={**launched.server_aliases(), **cfg.virtrigaud_environment(os.environ)},
        lower=[defaults],
    )
    logs.configure(server.settings.log_level, server.settings.log_format)
    directory = server.settings.credentials_dir
    secrets = {}
    if directory is not None:
        required = not server.origins["credentials_dir"].startswith(cfg.DEFAULT)
        secrets = credentials(directory, cls.Settings, name, required=required)
    backend = cfg.resolve(
        cls.Settings,
        name,
        conf.backends.get(name, {}),
        source=conf.source,
        aliases=launched.backend_aliases(name, cls.Settings),
        lower=[secrets],
    )
    launched.check_tls(tls_files(server.settings) is not None)
    return Effective(conf, name, name_origin, server, backend)


#: The settings naming TLS files one by one (instead of tls_dir).
TLS_FILES = ("tls_cert", "tls_key", "tls_client_ca")


def _server_flags(args: argparse.Namespace) -> dict[str, tuple[object, str]]:
    """``[server]`` settings given as flags: field -> value and the flag."""
    listen, port = getattr(args, "listen", None), getattr(args, "port", None)
    if listen and port is not None:
        raise ConfigError(f"--listen {listen} and --port {port} both name the address: keep one")
    flags: dict[str, tuple[object, str]] = {}
    if listen:
        flags["listen"] = (listen, "--listen")
    if port is not None:
        flags["listen"] = (f"[::]:{port}", f"--port {port}")
    if getattr(args, "health_port", None) is not None:
        flags["health_port"] = (args.health_port, "--health-port")
    if getattr(args, "log_level", None):
        flags["log_level"] = (args.log_level, "--log-level")
    return flags


def cmd_serve(args: argparse.Namespace, conf: cfg.Config) -> int:
    from .server import ProviderServer, run

    eff = effective(args, conf)
    settings = eff.server.settings
    launched = Launch.from_environment()
    backend = plugins.construct(eff.backend_name, eff.backend.settings)

    async def serve() -> None:
        # grpc.aio binds a server to the loop running when it is built.
        server = ProviderServer(backend, eff.backend_name, settings)
        if launched.active:
            log.info("launched by VirtRigaud as provider %s (%s)", launched.provider or "(unnamed)", eff.backend_origin)
        await server.serve_until_signal()

    run(serve(), settings.event_loop)
    return 0


def cmd_config(args: argparse.Namespace, conf: cfg.Config) -> int:
    print(render(effective(args, conf)), end="")
    return 0


def cmd_conformance(args: argparse.Namespace, conf: cfg.Config) -> int:
    from .conformance.runner import run

    eff = effective(args, conf)
    return run(eff.backend_name, args.config, select=args.select)


def main(argv: Sequence[str] | None = None) -> int:
    logs.configure()
    args = _parser().parse_args(argv)
    try:
        conf = cfg.load_file(args.config if args.config else cfg.default_config_path())
        if args.command == "backends":
            return cmd_backends(args.names)
        if args.command == "config":
            return cmd_config(args, conf)
        if args.command == "conformance":
            return cmd_conformance(args, conf)
        return cmd_serve(args, conf)
    except ConfigError as exc:
        print(f"vm-provider: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
