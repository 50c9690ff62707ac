"""A method and a dataset of your own, selected with `_target_` from your own config folder (`-cd`), with
no edit of kdrun: the same path a user's own model takes (tests/test_models.py)."""
import sys

from conftest import read_json, run_dirs
from inprocess import kdrun_in_process, one_cpu_thread  # noqa: F401  (autouse fixture)

MY_METHOD = '''
from dataclasses import dataclass

import torch.nn.functional as F

from kdrun.methods.base import Distiller
from kdrun.methods.config import MethodConfig


@dataclass
class LogitMatchingConfig(MethodConfig):
    name: str = "logit_l2"
    ce_weight: float = 1.0
    beta: float = 0.5  # weight of the L2 between student and teacher logits


class LogitMatching(Distiller):
    """Ba & Caruana 2014's logit regression, beside the hard labels."""
    Config = LogitMatchingConfig

    def weights(self, epoch, phase="main"):
        return {**super().weights(epoch, phase), "logit_l2": float(self.cfg.beta)}

    def terms(self, needed, batch):
        out = super().terms(needed, batch)
        if "logit_l2" in needed:
            out["logit_l2"] = F.mse_loss(batch.s_logits, batch.t_logits)
        return out
'''

MY_DATASET = '''
import torch

from kdrun.data.base import RawData, Split


def load_stripes(cfg):
    """Two classes of 1x6x6 images: horizontal or vertical stripes, with noise."""
    g = torch.Generator().manual_seed(0)
    def split(n):
        y = torch.arange(n) % 2
        base = torch.zeros(n, 1, 6, 6)
        base[y == 0, :, ::2, :] = 1.0
        base[y == 1, :, :, ::2] = 1.0
        x = ((base + 0.3 * torch.randn(n, 1, 6, 6, generator=g)).clamp(0, 1) * 255).to(torch.uint8)
        return Split(x, y)
    return RawData(split(int(cfg.size)), split(32), num_classes=2, class_names=["horizontal", "vertical"])
'''


def write_package(tmp_path, monkeypatch):
    """The package on sys.path (PYTHONPATH=pkg, in a shell), its configs in conf/ (kdrun -cd conf)."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "my_method.py").write_text(MY_METHOD)
    (tmp_path / "pkg" / "my_data.py").write_text(MY_DATASET)
    (tmp_path / "conf" / "method").mkdir(parents=True)
    (tmp_path / "conf" / "dataset").mkdir(parents=True)
    (tmp_path / "conf" / "method" / "logit_l2.yaml").write_text(
        "_target_: my_method.LogitMatching\nname: logit_l2\nce_weight: 1.0\nbeta: 0.5\n")
    (tmp_path / "conf" / "dataset" / "stripes.yaml").write_text(
        "_target_: my_data.load_stripes\nname: stripes\nsize: 64\n")
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    for name in ("my_method", "my_data"):
        monkeypatch.delitem(sys.modules, name, raising=False)


ARGS = ["teacher=mlp", "teacher.hidden=[16]", "student=mlp", "student.hidden=[8]", "train.epochs=2",
        "teacher.train.epochs=2", "train.batch_size=16", "teacher.train.batch_size=16", "progress=false"]


def test_a_users_own_method_and_dataset_run_without_editing_kdrun(tmp_path, monkeypatch, capsys):
    write_package(tmp_path, monkeypatch)
    code, out = kdrun_in_process(["-cd", str(tmp_path / "conf"), "method=logit_l2", "dataset=stripes", *ARGS],
                                 tmp_path, monkeypatch, capsys)
    assert code == 0, out
    metrics = read_json(run_dirs(tmp_path / "outputs")[0] / "metrics.json")
    assert metrics["status"] == "completed" and metrics["dataset"] == "stripes"
    losses = metrics["history"][-1]["losses"]
    assert set(losses) == {"ce", "logit_l2"}


def test_a_users_own_method_is_checked_against_its_schema(tmp_path, monkeypatch, capsys):
    write_package(tmp_path, monkeypatch)
    code, out = kdrun_in_process(["-cd", str(tmp_path / "conf"), "method=logit_l2", "dataset=stripes",
                                  "method.beta=abc", *ARGS], tmp_path, monkeypatch, capsys)
    assert code == 2 and "method.beta=abc: expected a number" in out and "Traceback" not in out, out
    code, out = kdrun_in_process(["-cd", str(tmp_path / "conf"), "method=logit_l2", "dataset=stripes",
                                  "method._target_=nowhere.X", *ARGS], tmp_path, monkeypatch, capsys)
    assert code == 2 and "method._target_=nowhere.X cannot be imported" in out, out
    (tmp_path / "conf" / "student").mkdir()
    (tmp_path / "conf" / "student" / "lost.yaml").write_text("_target_: nowhere.Net\n")
    code, out = kdrun_in_process(["-cd", str(tmp_path / "conf"), "student=lost", *ARGS[:2], *ARGS[4:]], tmp_path,
                                 monkeypatch, capsys)
    assert code == 2 and "student._target_=nowhere.Net cannot be imported (ModuleNotFoundError" in out, out
    assert "Traceback" not in out
