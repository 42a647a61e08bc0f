"""The `cointeract` command: one dispatcher, each subcommand in its own lazily imported module.

A subcommand is a line in COMMANDS: the module (relative to this package) and the function that takes the
remaining arguments, `main(argv: list[str]) -> int | None`, and parses them itself. A subcommand whose module
does not exist yet says so and exits 2; one whose optional dependencies are missing names the extra to install.
Every command runs inside the one error boundary (`cointeract_core/errors.py`): a user error is one line on stderr
and exit 1, its traceback only with `-v`; a bug keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from .cointeract_core import __version__
from .cointeract_core.errors import EXIT_INTERRUPTED, is_user_error, report_user_error

log = logging.getLogger(__name__)

DISTRIBUTION = "comfyui-cointeract"
EXIT_UNAVAILABLE = 2  # not implemented yet, or unknown command (argparse also exits 2 on usage errors)
EXIT_MISSING_DEPENDENCY = 3


@dataclass(frozen=True)
class Command:
    module: str  # relative to this package, e.g. "cointeract_core.weights.inspect"
    function: str  # called with the remaining argv
    help: str
    extra: str | None  # the pip extra that provides its optional dependencies
    issue: int  # where its work is tracked, for "not implemented yet"


COMMANDS: dict[str, Command] = {
    "generate": Command(
        "cointeract_core.pipeline.generate", "main", "person + product + prompt + speech -> video", "cli", 4
    ),
    "batch": Command(
        "cointeract_core.pipeline.generate", "batch_main", "run `generate` for each row of a CSV", "cli", 4
    ),
    "inspect": Command(
        "cointeract_core.weights.inspect", "main", "what a checkpoint file is and what it holds", None, 3
    ),
    "train": Command("train.__main__", "main", "two-stage CoInteract training from a TOML config", "train", 6),
    "prepare": Command("train.prepare", "main", "build a training dataset from source videos", "train", 6),
    "demo": Command("train.demo.run", "main", "the toy world end to end on a CPU in minutes", "train", 8),
    "evaluate": Command(
        "train.demo.evaluate", "main", "score a toy bundle on the shipped held-out story (+ audio probe)", "train", 16
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser; each subcommand's own options are parsed by its module."""
    parser = argparse.ArgumentParser(
        prog="cointeract",
        description="CoInteract: talking, product-demonstrating videos from a person image, a product image, "
        "a prompt and speech. Run `cointeract COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, cmd in COMMANDS.items():
        # add_help=False: `cointeract NAME --help` is passed on to the command's own parser.
        sub.add_parser(name, help=cmd.help, add_help=False)
    return parser


def _is_module_or_parent(missing: str, module: str) -> bool:
    return module == missing or module.startswith(missing + ".")


def _missing_dependency(name: str, err: ModuleNotFoundError, cmd: Command) -> int:
    how = f"pip install '{DISTRIBUTION}[{cmd.extra}]'" if cmd.extra else f"pip install '{DISTRIBUTION}'"
    print(
        f"cointeract {name}: the Python package '{err.name}' is missing. Install it with: {how}",
        file=sys.stderr,
    )
    return EXIT_MISSING_DEPENDENCY


def run_command(name: str, argv: Sequence[str]) -> int:
    """Import the module of subcommand `name` and call its function with `argv`; returns the exit code."""
    cmd = COMMANDS[name]
    package = __package__ or "comfyui_cointeract"
    target = f"{package}.{cmd.module}"
    try:
        module = importlib.import_module(target)
    except ModuleNotFoundError as err:
        if err.name is not None and _is_module_or_parent(err.name, target):
            print(f"cointeract {name}: not implemented yet — see issue {cmd.issue}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        if err.name is None or err.name.split(".")[0] == package.split(".")[0]:
            raise  # a bug inside the package, not a missing dependency
        return _missing_dependency(name, err, cmd)
    function = getattr(module, cmd.function, None)
    if function is None:
        print(f"cointeract {name}: not implemented yet — see issue {cmd.issue}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    try:
        code = function(list(argv))
    except ModuleNotFoundError as err:  # an optional dependency imported lazily inside the command
        if err.name is None or err.name.split(".")[0] == package.split(".")[0]:
            raise
        return _missing_dependency(name, err, cmd)
    except KeyboardInterrupt:
        print(f"cointeract {name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 - the one error boundary: user errors in one line, bugs re-raised
        if not is_user_error(err):
            raise
        return report_user_error(f"cointeract {name}", err)
    return int(code or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `cointeract` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = build_parser().parse_known_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    return run_command(args.command, rest)


if __name__ == "__main__":
    sys.exit(main())
