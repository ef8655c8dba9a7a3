"""The `fraudapp` command: serve the app, migrate, simulate, train, evaluate, benchmark.

Each stage module contributes its own subcommands through `add_cli(subparsers)`; this module
only assembles them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack

from fraudapp.logs import configure_logging
from fraudapp.settings import Settings

Handler = Callable[[argparse.Namespace], int | None]


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run("fraudapp.main:app", host=args.host, port=args.port, log_level="info")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from fraudapp import store
    from fraudapp.embedded import embedded_postgres

    settings = Settings()
    with ExitStack() as stack:
        url = settings.database_url or stack.enter_context(embedded_postgres(settings.data_dir))
        if args.revision.startswith("-") or args.revision == "base":
            store.downgrade(url, revision=args.revision)
        else:
            store.migrate(url, revision=args.revision)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fraudapp", description="Real-time fraud detection platform."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)

    serve = subparsers.add_parser("serve", help="run the app (same as uvicorn fraudapp.main:app)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(handler=_serve)

    migrate = subparsers.add_parser(
        "migrate", help="upgrade (or downgrade) the database schema; embedded server included"
    )
    migrate.add_argument("revision", nargs="?", default="head", help="head, base or a revision")
    migrate.set_defaults(handler=_migrate)

    for contribute in _contributors():
        contribute(subparsers)
    return parser


def _contributors() -> list[Callable[[argparse._SubParsersAction], None]]:
    from fraudapp import bench, generator, ml

    return [generator.add_cli, ml.add_cli, bench.add_cli]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(Settings().log_level)
    handler: Handler = args.handler
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError) as exc:
        logging.getLogger("fraudapp.cli").debug("cli.failed", exc_info=True)
        print(f"fraudapp {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
