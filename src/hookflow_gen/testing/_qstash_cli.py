"""``hookflow-qstash-dev``: run the QStash-compatible server in the foreground."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import TYPE_CHECKING

from .qstash import (
    DEFAULT_CURRENT_SIGNING_KEY,
    DEFAULT_NEXT_SIGNING_KEY,
    DEFAULT_TOKEN,
    DeliveryAttempt,
    QStashServer,
)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import FrameType

__all__ = ["add_arguments", "export_lines", "main"]


def export_lines(server: QStashServer) -> list[str]:
    """Return the shell ``export`` lines Upstash's dev server prints on start.

    Args:
        server: A running server.
    """
    return [
        f"export QSTASH_URL={server.url}",
        f"export QSTASH_TOKEN={server.token}",
        f"export QSTASH_CURRENT_SIGNING_KEY={server.current_signing_key}",
        f"export QSTASH_NEXT_SIGNING_KEY={server.next_signing_key}",
    ]


def _log_attempt(attempt: DeliveryAttempt) -> None:
    outcome = attempt.status if attempt.status is not None else attempt.error
    retry = "" if attempt.next_delay is None else f", retry in {attempt.next_delay:.0f}s"
    print(
        f"{attempt.message_id} retried={attempt.retried} {attempt.url} -> {outcome}{retry}",
        file=sys.stderr,
        flush=True,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The server's options, shared with ``manage.py hookflow qstash-dev``."""
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 = any)")
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="multiply every QStash delay and back-off by this factor (default 1)",
    )
    parser.add_argument("--quiet", action="store_true", help="do not log delivery attempts")


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until Ctrl-C (or SIGTERM), printing the environment to use first.

    Args:
        argv: Command-line arguments; defaults to ``sys.argv[1:]``.

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(
        prog="hookflow-qstash-dev",
        description="Run a QStash-compatible server in memory, for local development.",
    )
    add_arguments(parser)
    arguments = parser.parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # SIGTERM ends the server as cleanly as Ctrl-C does.
    signal.signal(signal.SIGTERM, on_signal)
    server = QStashServer(
        arguments.host,
        arguments.port,
        token=DEFAULT_TOKEN,
        current_signing_key=DEFAULT_CURRENT_SIGNING_KEY,
        next_signing_key=DEFAULT_NEXT_SIGNING_KEY,
        time_scale=arguments.time_scale,
        on_attempt=None if arguments.quiet else _log_attempt,
    )
    with server:
        print("\n".join(export_lines(server)), flush=True)
        try:
            # A timed wait keeps the main thread responsive to Ctrl-C.
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
