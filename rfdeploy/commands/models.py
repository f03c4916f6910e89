"""``rfdeploy models``: list the zoo."""

from __future__ import annotations

import argparse
import json
import math

from rich.table import Table

from rfdeploy import models
from rfdeploy.commands.common import human_console
from rfdeploy.loader.recognise import zoo_parameters


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list the model zoo")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    rows: list[dict] = []
    for entry in models.entries():
        params = sum(math.prod(shape) for _, shape in zoo_parameters(entry.name))
        rows.append({"name": entry.name, "params": params, "input_shape": list(entry.input_shape),
                     "description": entry.description})
    if args.json:
        print(json.dumps({"models": rows}, indent=2))
        return 0
    table = Table(title="rfdeploy model zoo")
    for column in ("name", "params (M)", "default input", "follows"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], f"{row['params'] / 1e6:.2f}", "x".join(map(str, row["input_shape"])),
                      row["description"])
    human_console(stderr=False).print(table)  # a listing's table is its output: `rfdeploy models | grep res`
    return 0
