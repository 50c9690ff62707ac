"""`teacher.checkpoint=` takes the files RepDistiller and mdistiller write, exactly as their training
scripts write them, and still refuses a file that would need arbitrary classes unpickled.

RepDistiller's `train_teacher.py` sets the lr with `np.sum(epoch > np.asarray(lr_decay_epochs))`, so after
the first decay its optimiser state holds a numpy.float64; it saves `ckpt_epoch_N.pth` {epoch, model,
accuracy, optimizer}, `<model>_best.pth` {epoch, model, best_acc, optimizer} and `<model>_last.pth` {opt
(its argparse options), model, optimizer}. mdistiller's trainer (the same lr rule) saves the distiller,
`module.student.*` and `module.teacher.*`, with {epoch, model, optimizer, best_acc}, and `student_*` files
{model}. Files from before PyTorch 1.6 are in the legacy format, and those pickled under numpy 1 name
`numpy.core.multiarray.scalar`.
"""
import argparse
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import QUICK
from inprocess import kdrun_in_process, one_cpu_thread  # noqa: F401  (autouse fixture)
from kdrun.errors import UserError
from kdrun.models.mlp import MLP
from kdrun.training.teacher import load_weights


def quick_teacher() -> MLP:
    return MLP(10, 3, (8, 8), hidden=(32,))  # QUICK's teacher=mlp on the synthetic dataset


def train_like_repdistiller(model: nn.Module, epochs: int = 3) -> tuple[argparse.Namespace, torch.optim.Optimizer]:
    opt = argparse.Namespace(model="mlp", dataset="cifar100", learning_rate=0.05, lr_decay_epochs=[1, 2],
                             lr_decay_rate=0.1, weight_decay=5e-4, momentum=0.9, epochs=epochs)
    optimizer = torch.optim.SGD(model.parameters(), lr=opt.learning_rate, momentum=opt.momentum,
                                weight_decay=opt.weight_decay)
    for epoch in range(1, epochs + 1):
        steps = np.sum(epoch > np.asarray(opt.lr_decay_epochs))
        if steps > 0:
            for group in optimizer.param_groups:
                group["lr"] = opt.learning_rate * (opt.lr_decay_rate ** steps)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(4, 3, 8, 8)), torch.tensor([0, 1, 2, 3])).backward()
        optimizer.step()
    assert isinstance(optimizer.param_groups[0]["lr"], np.floating)  # what makes these files special
    return opt, optimizer


def save(obj, path: Path, legacy: bool = False, numpy1: bool = False) -> Path:
    """torch.save, in the zip format or the legacy one, optionally as numpy 1 names the scalar."""
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=not legacy)
    data = buffer.getvalue()
    if numpy1:
        data = rename_scalar(data, legacy)
    path.write_bytes(data)
    return path


def rename_scalar(data: bytes, legacy: bool) -> bytes:
    old, new = b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar"
    if legacy:
        assert old in data
        return data.replace(old, new)
    source, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for item in source.infolist():
            member = source.read(item)
            if item.filename.endswith("data.pkl"):
                assert old in member
                member = member.replace(old, new)
            target.writestr(item, member)
    return out.getvalue()


def repdistiller_files(tmp_path: Path, model: nn.Module) -> dict[str, dict]:
    opt, optimizer = train_like_repdistiller(model)
    accuracy = torch.tensor(61.5)
    return {
        "ckpt_epoch_3.pth": {"epoch": 3, "model": model.state_dict(), "accuracy": accuracy,
                             "optimizer": optimizer.state_dict()},
        "mlp_best.pth": {"epoch": 3, "model": model.state_dict(), "best_acc": accuracy,
                         "optimizer": optimizer.state_dict()},
        "mlp_last.pth": {"opt": opt, "model": model.state_dict(), "optimizer": optimizer.state_dict()},
    }


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("numpy1", [False, True], ids=["numpy2", "numpy1"])
def test_repdistillers_teacher_files_load(tmp_path, legacy, numpy1):
    trained = quick_teacher()
    for name, content in repdistiller_files(tmp_path, trained).items():
        path = save(content, tmp_path / name, legacy=legacy, numpy1=numpy1)
        with pytest.raises(Exception):  # what made kdrun refuse them: the plain weights-only load
            torch.load(path, weights_only=True)
        loaded = quick_teacher()
        load_weights(loaded, path, "mlp")
        assert_same_weights(loaded, trained)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_mdistillers_files_load_the_student(tmp_path, legacy):
    student, teacher = quick_teacher(), quick_teacher()
    distiller = nn.DataParallel(nn.ModuleDict({"student": student, "teacher": teacher}))
    _, optimizer = train_like_repdistiller(student)
    latest = save({"epoch": 3, "model": distiller.state_dict(), "optimizer": optimizer.state_dict(),
                   "best_acc": 61.5}, tmp_path / "latest", legacy=legacy)
    student_best = save({"model": student.state_dict()}, tmp_path / "student_best", legacy=legacy)
    for path in (latest, student_best):
        loaded = quick_teacher()
        load_weights(loaded, path, "mlp")
        assert_same_weights(loaded, student)


class Hyperparameters:  # any class of the user's: unpickling it would import and run its module's code
    lr = 0.1


@pytest.mark.parametrize("content, name", [
    (lambda model: model, "kdrun.models.mlp.MLP"),  # torch.save(model, path): the whole module pickled
    (lambda model: {"model": model.state_dict(), "hp": Hyperparameters()}, "test_foreign_checkpoints.Hyperparameters"),
])
def test_a_file_of_pickled_objects_is_refused_by_name_and_the_advice_works(tmp_path, content, name):
    model = quick_teacher()
    path = tmp_path / "teacher.pt"
    torch.save(content(model), path)
    with pytest.raises(UserError) as refused:
        load_weights(quick_teacher(), path, "mlp")
    message = str(refused.value)
    assert f"holds a pickled {name} object" in message and "cannot be read" not in message
    assert "torch.save(model.state_dict(), path)" in message
    torch.save(model.state_dict(), path)  # the advice, followed
    loaded = quick_teacher()
    load_weights(loaded, path, "mlp")
    assert_same_weights(loaded, model)


def test_a_repdistiller_file_as_teacher_checkpoint_through_the_cli(tmp_path, monkeypatch, capsys):
    path = save(repdistiller_files(tmp_path, quick_teacher())["mlp_last.pth"], tmp_path / "mlp_last.pth",
                legacy=True, numpy1=True)
    code, out = kdrun_in_process([*QUICK, f"teacher.checkpoint={path}"], tmp_path, monkeypatch, capsys)
    assert code == 0, out
    assert f"loaded from {path}" in out
