"""The ``rfdeploy`` console entry: one sub-command per module in ``rfdeploy.commands``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from rfdeploy.errors import RFDeployError, one_line

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
        code = int(args.run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except RFDeployError as error:
        return _fail(str(error))
    except BrokenPipeError:  # `rfdeploy models --json | head -c 1`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at interpreter exit
        return _fail("standard output was closed before everything was written")
    except SystemExit as exit_:  # code the command ran (a model's forward, a plugin) called exit()
        return _fail(f"rfdeploy {args.command} was stopped by a call to exit({exit_.code!r})")
    except KeyboardInterrupt:
        print("rfdeploy: interrupted", file=sys.stderr)
        return 130


def _fail(message: str) -> int:
    print(f"rfdeploy: error: {one_line(message)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
