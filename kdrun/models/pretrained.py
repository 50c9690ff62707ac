"""Published teachers by name, `teacher.pretrained=SOURCE`: where a source's weights are and which of them is
which zoo model on which dataset. The sources are data (pretrained_sources.json beside this file): another
source with a stable public URL is one more entry there. `kdrun.training.pretrained` fetches them."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from kdrun.errors import UserError
from kdrun.registry import Registry

MIRROR_ENV = "KDRUN_PRETRAINED_MIRROR"  # a folder URL that holds copies of the sources' files, under their names


@dataclass(frozen=True)
class Published:
    """One published teacher: a zoo model's weights for a dataset, and the accuracy its source reports."""
    model: str
    dataset: str
    published_acc: float
    member: Optional[str] = None  # kind "archive": the archive's file that holds it
    weights: Optional[str] = None  # kind "torchvision": the weights' name, e.g. ResNet18_Weights.IMAGENET1K_V1


@dataclass(frozen=True)
class Source:
    name: str
    about: str
    kind: str  # "archive": a tar of torch files at `url`; "torchvision": torchvision's weights API
    models: dict  # {dataset: {model: Published}}
    url: Optional[str] = None
    page: Optional[str] = None  # where a person finds the file
    archive: Optional[str] = None  # the file's name (in the cache, and at a mirror)
    sha256: Optional[str] = None  # null: not known in advance; kdrun records it at the first download
    weights_key: Optional[str] = None  # the loaded file's entry that holds the state_dict
    rename: dict = field(default_factory=dict)  # {prefix in the file: prefix in kdrun's model}

    def published(self, model: str, dataset: str) -> Published:
        """The entry for teacher=`model` on dataset=`dataset`; refused, with what the source has, if none."""
        entry = self.models.get(dataset, {}).get(model)
        if entry is None:
            have = "; ".join(f"on dataset={d}: {', '.join(m)}" for d, m in self.models.items())
            raise UserError(f"teacher.pretrained={self.name} ({self.about}) has no teacher={model} for "
                            f"dataset={dataset}. It has {have}. Choose one of those, or teacher.pretrained=null "
                            f"to train the teacher.")
        return entry

    def download_url(self, file_name: str, url: str) -> str:
        """`url`, or the copy of `file_name` in the folder $KDRUN_PRETRAINED_MIRROR names."""
        mirror = os.environ.get(MIRROR_ENV, "").strip()
        return f"{mirror.rstrip('/')}/{file_name}" if mirror else url


def load_sources(path: Path) -> dict[str, Source]:
    out = {}
    for name, spec in json.loads(Path(path).read_text()).items():
        models = {dataset: {model: Published(model, dataset, **entry) for model, entry in entries.items()}
                  for dataset, entries in spec.pop("models").items()}
        spec = {k: v for k, v in spec.items() if k not in ("layout", "accuracy")}  # their citations
        out[name] = Source(name=name, models=models, **spec)
    return out


SOURCES: Registry = Registry("pretrained source", "teacher.pretrained")
for _name, _source in load_sources(Path(__file__).with_name("pretrained_sources.json")).items():
    SOURCES.register(_name, _source)
