"""The ``rfdeploy`` console entry: one sub-command per module in ``rfdeploy.commands``."""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys
import textwrap

from rfdeploy import __version__
from rfdeploy.errors import RFDeployError, one_line

COMMANDS = ("export", "optimize", "build", "triton", "bench", "analyze", "models", "demo")


def shows_default(action: argparse.Action) -> bool:
    """Off (a flag), absent (None) and empty defaults say nothing; the help text explains those."""
    default = action.default
    return not (default is None or default is False or default is argparse.SUPPRESS or default == [])


def help_line(action: argparse.Action) -> str:
    """An option's help with its default, unless the default is nothing to show or the help says it."""
    text = action.help or ""
    if "default" in text or not action.option_strings or not shows_default(action):
        return text
    return f"{text} (default: %(default)s)"


class HelpFormatter(argparse.HelpFormatter):
    """Every option's default; descriptions from the command modules' docstrings, paragraphs kept and
    reST's double backticks dropped."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return help_line(action)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = text.replace("``", "").strip().split("\n\n")
        return "\n\n".join(textwrap.fill(" ".join(paragraph.split()), width, initial_indent=indent,
                                         subsequent_indent=indent) for paragraph in paragraphs)


class OneLineErrors(argparse.ArgumentParser):
    """Usage mistakes as one ``rfdeploy: error:`` line and exit 2, like every other bad input."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"rfdeploy: error: {message} (see '{self.prog} --help')\n")

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        """Unrecognized arguments are named by the command they were given to, with its nearest option."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = command_parsers(self).get(getattr(parsed, "command", None), self)
            command.error(f"unrecognized arguments: {' '.join(extras)}{nearest_options(command, extras)}")
        return parsed


def command_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def nearest_options(parser: argparse.ArgumentParser, extras: list[str]) -> str:
    """``; did you mean --input-shape?`` for ``--input_shape``: each unknown option's nearest of ``parser``'s."""
    options = [option for action in parser._actions for option in action.option_strings]
    guesses = {}
    for written in (extra.split("=", 1)[0] for extra in extras if extra.startswith("--")):
        close = difflib.get_close_matches(written.replace("_", "-"), options, n=1, cutoff=0.7)
        if close:
            guesses[written] = close[0]
    if len(guesses) == 1:
        return f"; did you mean {next(iter(guesses.values()))}?"
    return f"; did you mean {', '.join(f'{near} for {written}' for written, near in guesses.items())}?" if guesses else ""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(
        prog="rfdeploy",
        description="Compile receptive-field-searched CNNs into exact plain-conv ONNX / TensorRT. Human output "
                    "goes to stderr; --json output to stdout.",
    )
    parser.add_argument("--version", action="version", version=f"rfdeploy {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                       parser_class=OneLineErrors)
    for name in COMMANDS:
        importlib.import_module(f"rfdeploy.commands.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = int(args.run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except RFDeployError as error:
        return _fail(str(error))
    except BrokenPipeError:  # `rfdeploy models --json | head -2`: the reader had enough, a normal end
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at interpreter exit
        return 0
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
