"""Run the local cloud in the foreground: ``python -m taskctl.localcloud``."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from types import FrameType

from taskctl.localcloud.server import LocalCloud


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m taskctl.localcloud")
    parser.add_argument("--state-dir", type=Path, default=Path(".taskctl"))
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log-level", default="INFO")
    arguments = parser.parse_args(argv)

    logging.basicConfig(
        level=arguments.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    cloud = LocalCloud(arguments.state_dir, port=arguments.port)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        cloud.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    cloud.start()
    cloud.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
