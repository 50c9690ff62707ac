"""What kdrun checks on the command line before Hydra runs: only the words themselves (nothing is
composed; the config's keys and types are checked by the schema as Hydra composes, kdrun.schema).

The flags are Hydra's documented command-line flags (https://hydra.cc/docs/advanced/hydra-command-line-flags/),
read here with a parser of our own so that no private Hydra API is needed.
"""
from __future__ import annotations

import argparse
import importlib.util
import shlex
from typing import Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException

from kdrun.errors import UserError


def argv_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False, prog="kdrun")
    for flag in (("--help", "-h"), ("--hydra-help",), ("--resolve",), ("--run", "-r"), ("--multirun", "-m"),
                 ("--shell-completion", "-sc"), ("--version",)):
        parser.add_argument(*flag, action="store_true")
    for flag in (("--cfg", "-c"), ("--package", "-p"), ("--config-path", "-cp"), ("--config-name", "-cn"),
                 ("--config-dir", "-cd"), ("--experimental-rerun",)):
        parser.add_argument(*flag)
    parser.add_argument("--info", "-i", nargs="?", const="all")
    parser.add_argument("overrides", nargs="*")
    return parser


def parse_argv(argv: list[str]) -> Optional[argparse.Namespace]:
    """The flags and overrides of a kdrun command line, or None where Hydra's own parser will refuse it."""
    try:
        args, unknown = argv_parser().parse_known_args(argv)
    except SystemExit:
        return None
    return None if unknown else args


def preflight(argv: list[str]) -> Optional[argparse.Namespace]:
    """The checks of the command line's words; its parsed flags (None where Hydra's parser will refuse it)."""
    check_override_grammar(argv)
    check_modes(argv)
    check_sweep_preset(argv)
    check_launcher(argv)
    return parse_argv(argv)


def check_launcher(argv: list[str]) -> None:
    """`hydra/launcher=slurm` needs the optional hydra-submitit-launcher: say how to get it."""
    if any(a.startswith("hydra/launcher=slurm") for a in argv) and \
            importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        raise UserError("hydra/launcher=slurm submits the jobs through hydra-submitit-launcher, which is not "
                        "installed here. Install it with pip install -e \".[slurm]\" in your kdrun checkout "
                        "(or pip install hydra-submitit-launcher).")


GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic/"
SHELL_SPECIAL = "`\\$!"  # what a shell still interprets inside double quotes


def check_override_grammar(argv: list[str]) -> None:
    """An override that Hydra's grammar cannot read (`dataset.root=~/data`, an unquoted non-ASCII path)
    ends in Hydra's LexerNoViableAltException: named here, with the quoted form that it reads."""
    args = parse_argv(argv)
    if args is None:
        return  # argparse has said what is wrong
    parser = OverridesParser.create()
    for text in args.overrides:
        try:
            parser.parse_overrides([text])
        except OverrideParseException as e:
            raise UserError(grammar_message(text, e, parser)) from None


def grammar_message(text: str, error: Exception, parser: OverridesParser) -> str:
    key, sep, value = text.partition("=")
    quoted = _quoted_form(key, value, parser) if sep else None
    if quoted is None:
        reason = str(error).strip().splitlines()[0]
        return f"{text} cannot be read by Hydra's override grammar ({reason}). See {GRAMMAR} for what a value may hold."
    bad = next((c for i, c in enumerate(value) if not _parses(parser, f"{key}={value[:i + 1]}")), None)
    what = f"`{bad}` cannot stand in an unquoted value" if bad else "the value must be quoted"
    return (f"{text}: {what} in Hydra's override grammar ({GRAMMAR}). Write it as {quoted} (the outer "
            f"quotes are the shell's, the inner ones Hydra's).")


def _parses(parser: OverridesParser, text: str) -> bool:
    try:
        parser.parse_overrides([text])
        return True
    except OverrideParseException:
        return False


def _quoted_form(key: str, value: str, parser: OverridesParser) -> Optional[str]:
    """The shell argument that gives Hydra `key` with `value` as a quoted string, or None when quoting
    is not the fix (the key itself is wrong, the value looks like a list or a dict meant as such)."""
    if not _parses(parser, f"{key}=x") or value[:1] in "[{(":
        return None
    home = value == "~" or value.startswith("~/")  # in quotes no one expands ~: the shell's $HOME does
    if home:
        rest = value[1:]
        if any(c in rest for c in SHELL_SPECIAL + "'") or not _parses(parser, f"{key}='/home{rest}'"):
            return None
        return f'"{key}=\'$HOME{rest}\'"'
    fallback = None
    for inner in ("'", '"'):
        hydra_arg = f"{key}={inner}{value}{inner}"
        if inner in value or not _parses(parser, hydra_arg) or parser.parse_overrides([hydra_arg])[0].value() != value:
            continue
        if not any(c in hydra_arg for c in SHELL_SPECIAL + '"'):
            return f'"{hydra_arg}"'
        if "'" not in hydra_arg:
            return f"'{hydra_arg}'"
        fallback = fallback or shlex.quote(hydra_arg)
    return fallback


def check_modes(argv: list[str]) -> None:
    """Hydra raises (with a traceback) for two of its modes at once, e.g. `kdrun -m --cfg job`."""
    args = parse_argv(argv)
    if args is None:
        return  # argparse has said what is wrong
    modes = [flag for flag, on in (("--run", args.run), ("-m", args.multirun), ("--cfg", args.cfg),
                                   ("--info", args.info), ("--shell-completion", args.shell_completion)) if on]
    if len(modes) > 1:
        hint = (" To see the config of one job of a sweep, drop -m and give that job's values, e.g. "
                "kdrun --cfg job method.T=4.") if "-m" in modes else ""
        raise UserError(f"{' and '.join(modes)} cannot be given together.{hint}")


def check_sweep_preset(argv: list[str]) -> None:
    """`sweep=NAME` sets a grid for `-m` (hydra.sweeper.params); without -m Hydra would run one job with
    the defaults and say nothing."""
    args = parse_argv(argv)
    if args is None:
        return
    if args.multirun or args.cfg or args.info or args.help or args.hydra_help or args.shell_completion:
        return
    for text in args.overrides:
        key, sep, value = text.partition("=")
        if key.lstrip("+") == "sweep" and sep and value not in ("", "null"):
            raise UserError(f"sweep={value} is a grid for a sweep: without -m kdrun would run one job with the "
                            f"defaults, not the grid. Run the sweep with -m: kdrun -m "
                            f"{' '.join(shlex.quote(a) for a in argv)} (kdrun --cfg hydra sweep={value} shows its "
                            f"grid under hydra.sweeper.params).")
