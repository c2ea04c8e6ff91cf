"""What producer.py and consumer.py share: the config file and the options that override it."""
from __future__ import annotations

import argparse
import configparser
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def settings(description: str, add_arguments=None) -> tuple[argparse.Namespace,
                                                             configparser.ConfigParser]:
    """The parsed command line, --url and --queue filled in from the config file, and the
    config file itself; exits with a message when the file cannot be read."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=str(HERE / "system-monitor.conf"),
                        help="the INI file (system-monitor.conf next to this script)")
    parser.add_argument("--url", help="RestMQ base URL (config: [restmq] url)")
    parser.add_argument("--queue", help="queue name (config: [restmq] queue)")
    parser.add_argument("--count", type=int, default=0, help="stop after N samples (0: never)")
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args()
    config = configparser.ConfigParser()
    if not config.read(args.config):
        sys.exit(f"cannot read the config file {args.config}")
    args.url = args.url or config.get("restmq", "url")
    args.queue = args.queue or config.get("restmq", "queue")
    return args, config
