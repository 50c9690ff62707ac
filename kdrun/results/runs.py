"""Finding runs below directories and reading what each one left: metrics.json and Hydra's `.hydra/`.

Kept free of torch so that `kdrun-report` starts fast.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from kdrun.errors import UserError

METRICS_FILE = "metrics.json"
NOT_STARTED = "not started"  # a job directory with Hydra's config but no metrics.json

# Keys that do not change what a run computes (kdrun.results.identity.NOT_IN_IDENTITY), plus the seed:
# runs that differ only in these belong to one configuration.
NOT_IN_CONFIGURATION = ("seed", "progress", "cache_dir", "device", "per_pair", "logger")


def outside_configuration(key: str) -> bool:
    """Whether a dotted key (`per_pair.dkd_beta`) lies below one of NOT_IN_CONFIGURATION."""
    return key.split(".", 1)[0] in NOT_IN_CONFIGURATION


@dataclass
class Run:
    path: Path
    metrics: dict
    config: dict  # the job's config flattened to dotted keys (hashable values)
    choices: dict = field(default_factory=dict)  # config-group choices, e.g. {"method": "kd"}
    overrides: list = field(default_factory=list)  # the job's command-line overrides
    has_config: bool = True  # False: no .hydra/config.yaml, `config` holds what metrics.json says
    warnings: list = field(default_factory=list)  # files of the run that exist but cannot be read

    @property
    def status(self) -> str:
        return str(self.metrics.get("status") or NOT_STARTED)

    @property
    def seed(self) -> Any:
        return self.config.get("seed", self.metrics.get("seed"))

    @property
    def error(self) -> str:
        return str(self.metrics.get("error") or "")

    def configuration(self) -> tuple:
        """What the run computes, the seed excluded: runs with equal configurations are one group."""
        return tuple(sorted((k, v) for k, v in self.config.items() if not outside_configuration(k)))


def hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(hashable(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def flatten(node: Any, prefix: str = "") -> dict:
    """A config as {dotted.key: value}; interpolations that cannot be resolved here stay as text."""
    out: dict = {}
    raw = OmegaConf.to_container(node, resolve=False) if isinstance(node, DictConfig) else node
    for key in raw:
        try:
            value = node[key]
        except Exception:  # ${hydra:...} resolves only inside Hydra; ??? is missing
            value = raw[key]
        if isinstance(value, (dict, DictConfig)) and len(value):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = hashable(_plain(value))
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        try:
            return OmegaConf.to_container(value, resolve=True)
        except Exception:
            return OmegaConf.to_container(value, resolve=False)
    return value


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # OmegaConf.load is ~10x slower: many runs


def _load_yaml(path: Path, kind: type = (dict, list), warnings: Optional[list] = None) -> Any:
    """A YAML file Hydra wrote, when it holds a `kind` (dict or list); with interpolations, as an OmegaConf
    node that can resolve them. A file that is there but cannot be read is added to `warnings`."""
    if not path.is_file():
        return None
    warnings = [] if warnings is None else warnings
    try:
        text = path.read_text()
        data = yaml.load(text, Loader=_Loader)
        if not isinstance(data, kind):
            raise ValueError(f"it holds no {'list' if kind is list else 'mapping'}")
        return OmegaConf.create(data) if "${" in text else data
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        warnings.append(f"{path} cannot be read ({reason[:160]})")
        return None


def read_metrics(run_dir: Path) -> dict:
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return {}
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"status": "unreadable", "error": f"{path} is not valid JSON"}
    return metrics if isinstance(metrics, dict) else {"status": "unreadable", "error": f"{path} holds no object"}


FROM_METRICS = ("dataset", "teacher", "student", "method", "schedule")  # when a run has no .hydra/
RELABELLED = "relabelled"  # a run whose .hydra/config.yaml is another configuration's


def describes(config: Any, config_id: str) -> bool:
    """Whether a run's .hydra/config.yaml is the configuration its metrics.json was recorded under
    (True when that cannot be told here, e.g. an interpolation that resolves only inside Hydra)."""
    from kdrun.results.identity import config_identity

    try:
        return config_identity(config) == config_id
    except Exception:
        return True


def read_run(run_dir: Path) -> Run:
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    warnings: list[str] = []
    config = _load_yaml(run_dir / ".hydra" / "config.yaml", dict, warnings)
    if warnings:
        warnings[-1] += ": the run is shown with the few values its metrics.json holds"
    hydra = _load_yaml(run_dir / ".hydra" / "hydra.yaml", dict, warnings)
    overrides = _load_yaml(run_dir / ".hydra" / "overrides.yaml", list, warnings)
    has_config = isinstance(config, (dict, DictConfig))
    if has_config and metrics.get("config_id") and not describes(config, str(metrics["config_id"])):
        metrics = {**metrics, "status": RELABELLED, "error": (
            f"{run_dir / '.hydra' / 'config.yaml'} does not describe this run: its config_id is not the run's "
            f"({metrics['config_id']} in metrics.json). The config was rewritten after the run (an earlier kdrun "
            f"let Hydra rewrite .hydra/ before it refused another configuration), so the run's configuration is "
            f"unknown and it is left out of the table.")}
        has_config, hydra, overrides = False, None, None
    choices = {}
    if has_config:
        flat = flatten(config)
    else:  # a run made without Hydra (kdrun.run.run called directly): what metrics.json says
        choices = {k: metrics[k] for k in FROM_METRICS if k in metrics}
        flat = {f"{k}.name": v for k, v in choices.items()}
        flat.update({"seed": metrics.get("seed"), "train.epochs": metrics.get("epochs")})
    raw = OmegaConf.to_container(hydra, resolve=False) if isinstance(hydra, DictConfig) else hydra
    raw = ((raw or {}).get("hydra") or {}).get("runtime", {}).get("choices") if isinstance(raw, dict) else None
    if isinstance(raw, dict):
        choices = {str(k): v for k, v in raw.items() if not str(k).startswith("hydra/")}
    return Run(path=run_dir, metrics=metrics, config=flat, choices=choices,
               overrides=[str(o) for o in overrides] if isinstance(overrides, (list, ListConfig)) else [],
               has_config=has_config, warnings=warnings)


def _natural(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def run_dirs_below(root: Path) -> list[Path]:
    found = {p.parent for p in root.rglob(METRICS_FILE)}
    found |= {p.parent.parent for p in root.rglob(".hydra/config.yaml")}
    if (root / METRICS_FILE).is_file():
        found.add(root)
    return sorted(found, key=_natural)


def find_runs(dirs: Iterable[Path]) -> list[Run]:
    runs, seen = [], set()
    for d in map(Path, dirs):
        if not d.is_dir():
            raise UserError(f"{d} is not a directory. Give the output directory of kdrun runs or of a "
                            f"sweep (e.g. outputs/ or outputs/multirun/DATE/TIME).")
        for run_dir in run_dirs_below(d):
            key = run_dir.resolve()
            if key not in seen:
                seen.add(key)
                runs.append(read_run(run_dir))
    return runs
