"""The schema of `hydra/launcher=slurm`: hydra-submitit-launcher's SLURM keys and kdrun's packing keys.
Imported only where hydra-submitit-launcher is installed (`pip install -e ".[slurm]"`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf


@dataclass
class SlurmConf(SlurmQueueConf):
    """conf/hydra/launcher/slurm.yaml says what kdrun's keys do; hydra-submitit-launcher's docs the others."""
    _target_: str = "hydra_plugins.kdrun_launchers.slurm.SlurmLauncher"
    pack: bool = False
    max_members: Optional[int] = None
    batch_students: Optional[bool] = None
