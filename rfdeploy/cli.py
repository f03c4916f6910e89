"""The ``rfdeploy`` console entry: one sub-command per module in ``rfdeploy.commands``."""

from __future__ import annotations

import argparse
import importlib
import sys

from rfdeploy.errors import RFDeployError

COMMANDS = ("export", "build", "bench", "analyze", "models", "demo")


class OneLineErrors(argparse.ArgumentParser):
    """Usage mistakes as one ``rfdeploy: error:`` line and exit 2, like every other bad input."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"rfdeploy: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(
        prog="rfdeploy",
        description="Compile receptive-field-searched CNNs into exact plain-conv ONNX / TensorRT.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                       parser_class=OneLineErrors)
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
