"""The schema of kdrun's own launcher option. It lives outside `hydra_plugins`: Hydra's plugin scan
executes the plugin modules again, and a job's config, pickled for its process, must name a class that
is the same object in every import."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional


@dataclass
class LocalGpusConf:
    """hydra/launcher=local_gpus (conf/hydra/launcher/local_gpus.yaml says what each key does)."""
    _target_: str = "hydra_plugins.kdrun_launchers.local_gpus.LocalGpusLauncher"
    gpus: Optional[List[int]] = None
    jobs_per_device: int = 1
    cpu_jobs: int = 2
    poll_s: float = 0.2
    pack: bool = False
    max_members: Optional[int] = None
    batch_students: Optional[bool] = None


@dataclass
class PackedConf:
    """hydra/launcher=packed (conf/hydra/launcher/packed.yaml says what each key does)."""
    _target_: str = "hydra_plugins.kdrun_launchers.packed.PackedLauncher"
    max_members: Optional[int] = None
    batch_students: Optional[bool] = None
