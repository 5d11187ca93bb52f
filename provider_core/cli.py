"""The ``vm-provider`` command.

vm-provider [serve] --backend NAME [--config FILE] [--listen HOST:PORT]
vm-provider backends [--config FILE]
vm-provider conformance --backend NAME [--config FILE]
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from . import config as cfg
from . import plugins
from .errors import ConfigError

log = logging.getLogger("vm_provider")


def _options(default: object) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The options of every command, and those of the serving commands."""
    common = argparse.ArgumentParser(add_help=False, argument_default=default)
    common.add_argument("--config", type=Path, help="plugins.toml (default: $VM_PROVIDER_CONFIG or ./plugins.toml)")
    serve = argparse.ArgumentParser(add_help=False, parents=[common], argument_default=default)
    serve.add_argument("--backend", help="backend to serve (default: [provider] backend in the config, else libvirt)")
    serve.add_argument("--listen", help="HOST:PORT to listen on (default 127.0.0.1:50051)")
    serve.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default INFO")
    return common, serve


def _parser() -> argparse.ArgumentParser:
    _, serve = _options(None)
    # A subcommand's options default to "absent", so that options given before
    # the subcommand (vm-provider --backend x serve) are not reset by it.
    common, sub_serve = _options(argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="vm-provider", description="Serve provider.v1.Provider on a hypervisor backend.", parents=[serve]
    )
    sub = parser.add_subparsers(dest="command", metavar="{serve,backends,conformance}")
    sub.add_parser("serve", parents=[sub_serve], help="serve the provider (the default)")
    sub.add_parser("backends", parents=[common], help="list installed backends and their capabilities")
    conf = sub.add_parser("conformance", parents=[sub_serve], help="run the conformance kit against a backend")
    conf.add_argument("-k", dest="select", help="only checks whose name contains this")
    return parser


def _backend_name(args: argparse.Namespace, conf: cfg.Config) -> str:
    return args.backend or conf.backend or "libvirt"


def cmd_backends(conf: cfg.Config) -> int:
    names = plugins.installed()
    if not names:
        print("no backends installed")
        return 1
    status = 0
    for name in names:
        try:
            cls = plugins.load_class(name)
        except ConfigError as exc:
            print(f"{name}: BROKEN: {exc}")
            status = 1
            continue
        caps = ", ".join(sorted(c.value for c in cls.capabilities)) or "(core operations only)"
        print(f"{name}: {caps}")
    return status


def _server_settings(args: argparse.Namespace, conf: cfg.Config) -> cfg.ServerSettings:
    table = dict(conf.server)
    if getattr(args, "listen", None):
        table["listen"] = args.listen
    if getattr(args, "log_level", None):
        table["log_level"] = args.log_level
    return cfg.build(cfg.ServerSettings, "server", table)


def cmd_serve(args: argparse.Namespace, conf: cfg.Config) -> int:
    from .server import ProviderServer, run

    settings = _server_settings(args, conf)
    logging.getLogger().setLevel(settings.log_level.upper())
    name = _backend_name(args, conf)
    backend = plugins.load(name, conf.backends.get(name, {}))

    async def serve() -> None:
        # grpc.aio binds a server to the loop running when it is built.
        await ProviderServer(backend, name, settings).serve_until_signal()

    run(serve(), settings.event_loop)
    return 0


def cmd_conformance(args: argparse.Namespace, conf: cfg.Config) -> int:
    from .conformance.runner import run

    name = _backend_name(args, conf)
    return run(name, args.config, select=args.select)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        conf = cfg.load_file(args.config if args.config else cfg.default_config_path())
        if args.command == "backends":
            return cmd_backends(conf)
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
