"""A mistyped key on the command line (`train.epochz=3`), named with the keys its node has.

Hydra refuses such an override with "Key 'epochz' is not in struct" and the advice to add the key with
`+`, which kdrun then refuses too (config_check). So before Hydra runs, the keys of the command's plain
`key=value` overrides are looked up in the config of its group choices. For `-m`, in the configs of
the sweep's first job and of each other option of each swept group (sweep presets included): jobs of the
sweep, each of which Hydra would refuse. Only a key that Hydra would certainly refuse is named here;
whatever this check cannot decide is left to Hydra.
"""
from __future__ import annotations

import difflib
import logging
import shlex
from typing import Optional

from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.errors import OverrideParseException
from omegaconf import DictConfig, ListConfig, OmegaConf

from kdrun.configs import CONFIG_DIR
from kdrun.data.augment import KEYS as AUGMENT_KEYS
from kdrun.errors import UserError

log = logging.getLogger("kdrun")
ADDED_WITH_PLUS = {  # nodes whose other keys are added with +
    "teacher": "A constructor argument that the model's config lacks",
    "student": "A constructor argument that the model's config lacks",
    "dataset.augment": f"An augmentation that the dataset's config does not list ({', '.join(AUGMENT_KEYS)})",
}
PREFIX = {OverrideType.ADD: "+", OverrideType.FORCE_ADD: "++", OverrideType.DEL: "~"}


GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic/"
SHELL_SPECIAL = "`\\$!"  # what a shell still interprets inside double quotes


def check_override_grammar(argv: list[str]) -> None:
    """An override that Hydra's grammar cannot read (`dataset.root=~/data`, an unquoted non-ASCII path)
    ends in Hydra's LexerNoViableAltException: named here, with the quoted form that it reads."""
    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit:
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


def check_override_keys(argv: list[str]) -> None:
    """Raise a UserError for the first `key=value` override whose key a job's config lacks."""
    try:
        args = get_args_parser().parse_args(argv)
        if (args.help or args.hydra_help or args.info or args.shell_completion or args.experimental_rerun
                or args.config_path or args.config_name or args.config_dir):
            return
        overrides = OverridesParser.create().parse_overrides(args.overrides)
        with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
            groups = set(GlobalHydra.instance().config_loader().list_groups(""))
            keys = [o.key_or_group for o in overrides
                    if o.type == OverrideType.CHANGE and not _is_group(o, groups) and not _is_hydras(o)]
            if keys:
                _check_jobs(keys, [o for o in overrides if _is_group(o, groups) and not _is_hydras(o)],
                            args.multirun, groups)
            _check_launcher_keys(overrides)
    except UserError:
        raise
    except (Exception, SystemExit) as e:  # Hydra says what is wrong with what cannot be parsed or composed
        log.debug("Override keys not checked (%s).", e)


def _check_jobs(keys: list[str], group_overrides: list[Override], multirun: bool, groups: set[str]) -> None:
    options = {_group_key(o): _options(o) for o in group_overrides}
    first = _compose(options, {}, hydra=multirun)
    if multirun:  # a sweep preset's groups (hydra.sweeper.params), where the command line leaves them
        params = OmegaConf.select(first, "hydra.sweeper.params") or {}
        preset = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
        preset = {_group_key(o): _options(o) for o in preset
                  if _is_group(o, groups) and _group_key(o) not in options}
        if preset:
            options.update(preset)
            first = _compose(options, {})
    jobs = [{}] + [{group: option} for group, opts in options.items() for option in opts[1:]]
    for job in jobs:
        cfg = _compose(options, job) if job else first
        try:
            for key in keys:
                check_key(cfg, key)
        except UserError as e:
            swept = {g: job.get(g, opts[0]) for g, opts in options.items() if len(opts) > 1}
            if not swept:
                raise
            named = ", ".join(f"{g}={o}" for g, o in swept.items())
            raise UserError(f"{e} (That is the config of the sweep's job with {named}.)") from None


def _check_launcher_keys(overrides: list[Override]) -> None:
    """`hydra.launcher.KEY=...` against the keys of the launcher the command chooses (Hydra's advice for a
    typo there, to add the key with +, would be refused by the launcher)."""
    keys = [o.key_or_group for o in overrides
            if o.type == OverrideType.CHANGE and o.key_or_group.startswith("hydra.launcher.")]
    if not keys:
        return
    launcher = [f"hydra/launcher={_options(o)[0]}" for o in overrides
                if o.key_or_group == "hydra/launcher" and o.type == OverrideType.CHANGE]
    cfg = compose("config", overrides=launcher, return_hydra_config=True)
    for key in keys:
        try:
            check_key(cfg, key)
        except UserError as e:
            node = OmegaConf.select(cfg, "hydra.launcher")
            part = key.split(".")[2]
            if difflib.get_close_matches(part, [str(k) for k in node.keys()], n=1):  # a typo: said so
                raise
            others = [name for name in _launchers() if f"hydra/launcher={name}" not in launcher
                      and _has_key(["hydra/launcher=" + name], key)]
            hint = f" It is a key of {', '.join('hydra/launcher=' + n for n in others)}." if others else ""
            raise UserError(f"{e}{hint}") from None


def _launchers() -> list[str]:
    return sorted(GlobalHydra.instance().config_loader().get_group_options("hydra/launcher"))


def _has_key(overrides: list[str], key: str) -> bool:
    try:
        check_key(compose("config", overrides=overrides, return_hydra_config=True), key)
        return True
    except Exception:  # not that key, or a launcher that is not installed
        return False


def check_key(cfg: DictConfig, key: str) -> None:
    node, parts = cfg, key.split(".")
    for i, part in enumerate(parts):
        parent = ".".join(parts[:i])
        if isinstance(node, ListConfig):
            if not (part.isdigit() and int(part) < len(node)):
                return
            node = node._get_node(int(part))
        elif isinstance(node, DictConfig):
            if node._is_none() or node._is_interpolation() or node._is_missing():
                return
            if part not in node.keys():  # `in node` is false for a key left open (`???`)
                raise UserError(unknown_key(key, parent, list(node.keys())))
            node = node._get_node(part)
        else:  # a value: only a null or a plain value certainly has no keys
            value = node._value()
            if not (value is None or isinstance(value, (bool, int, float))):
                return
            raise UserError(f"{key}: {parent} is {'null' if value is None else value}, not a group of keys. "
                            f"Set {parent} as a whole, e.g. {parent}='{{{part}: VALUE}}'.")


def unknown_key(key: str, parent: str, valid: list) -> str:
    """The message for a key that the config lacks below `parent`: that node's keys, and the key with the
    closest of them."""
    parts = key.split(".")
    depth = len(parent.split(".")) if parent else 0
    close = difflib.get_close_matches(parts[depth], [str(v) for v in valid], n=1)
    hint = f" Did you mean {'.'.join(parts[:depth] + close + parts[depth + 1:])}?" if close else ""
    listed = ", ".join(str(v) for v in valid) or "none"
    printed = "`kdrun --cfg hydra` (with the same hydra/launcher=...) prints" if key.startswith("hydra.") \
        else "`kdrun --cfg job` prints"
    message = (f"{key} is not a key of this config ({parent or 'the top level'} has: {listed}).{hint} "
               f"Check its spelling; {printed} every key.")
    if parent in ADDED_WITH_PLUS:
        message += f" {ADDED_WITH_PLUS[parent]} is added with +: +{key}=VALUE."
    return message


def _compose(options: dict, job: dict, hydra: bool = False) -> DictConfig:
    choices = {group: job.get(group, opts[0]) for group, opts in options.items()}
    return compose("config", overrides=[g if o is None else f"{g}={o}" for g, o in choices.items()],
                   return_hydra_config=hydra)


def _is_group(o: Override, groups: set[str]) -> bool:
    name = o.key_or_group
    return "/" in name or o.package is not None or ("." not in name and name in groups)


def _is_hydras(o: Override) -> bool:
    return o.key_or_group.split("/")[0].split(".")[0] == "hydra"


def _group_key(o: Override) -> str:
    return PREFIX.get(o.type, "") + o.key_or_group + (f"@{o.package}" if o.package is not None else "")


def _options(o: Override) -> list[Optional[str]]:
    if o.type == OverrideType.DEL:
        return [None]
    return list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
