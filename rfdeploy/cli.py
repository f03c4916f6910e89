"""The ``rfdeploy`` console entry: one sub-command per module in ``rfdeploy.commands``."""

from __future__ import annotations

import argparse
import importlib
import sys

from rfdeploy.errors import RFDeployError

COMMANDS = ("export", "bench", "analyze", "models", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rfdeploy",
        description="Compile receptive-field-searched CNNs into exact plain-conv ONNX / TensorRT.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"rfdeploy.commands.{name}")
        except ModuleNotFoundError as error:  # a command not written yet
            if error.name != f"rfdeploy.commands.{name}":
                raise
            continue
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except RFDeployError as error:
        print(f"rfdeploy: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rfdeploy: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
