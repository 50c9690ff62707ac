"""One teacher pass per batch for a packed group's members.

The members' teachers have the same weights (the group is formed so) and see the same shared batch,
so the first member to need the teacher's outputs on a batch runs its teacher once, with hooks on
every feature that any member reads, and the others take their logits and features from that pass:
the same tensors their own pass would give, bit for bit. Members whose method runs the teacher its own
way (an override of `teacher_forward`) share only with members of the same method class.
"""
from __future__ import annotations

from typing import Optional

import torch

from kdrun.models.features import FeatureHooks
from kdrun.packed.group import Member


def teacher_paths(distiller) -> list[str]:
    hooks = getattr(distiller, "_teacher_hooks", None)
    return list(hooks.paths) if hooks is not None else []


def kind(distiller):
    """Members whose teachers run the same way share passes."""
    return type(distiller).teacher_forward


class SharedTeacherPass:
    """What a member's training loop gets as its teacher-output cache (`Distiller.teacher_outputs`
    calls `outputs` when `shared` is set); `own` is the member's own cache (unaugmented data), which
    keeps serving it once complete."""
    shared = True

    def __init__(self, member: Member, own=None):
        self.member, self.own = member, own

    @property
    def complete(self) -> bool:
        return False

    def outputs(self, distiller, x: torch.Tensor, index: Optional[torch.Tensor]):
        if self.own is not None and self.own.complete:
            return self.own.lookup(index)
        logits, feats = shared_outputs(self.member, distiller, x)
        if self.own is not None and index is not None:
            self.own.store(index, logits, feats)
        return logits, feats

    def epoch_done(self) -> None:
        if self.own is not None:
            self.own.epoch_done()


def shared_outputs(member: Member, distiller, x: torch.Tensor):
    member.distiller = distiller
    entry = member.batch
    wanted = teacher_paths(distiller)
    if entry is None:
        return distiller.teacher_forward(x)
    done = entry.teacher.get(kind(distiller))
    if done is None or not set(wanted) <= set(done[1]):
        done = entry.teacher[kind(distiller)] = teacher_pass(member, distiller, x, wanted)
    logits, feats = done
    return logits, {p: v for p, v in feats.items() if p in wanted}  # in the order the hooks fired, as alone


def teacher_pass(member: Member, distiller, x: torch.Tensor, wanted: list[str]):
    """The teacher on `x` with hooks on the features of every member of the same kind."""
    paths = list(wanted)
    for other in member.group.alive():
        if other.distiller is not None and kind(other.distiller) is kind(distiller):
            paths += [p for p in teacher_paths(other.distiller) if p not in paths]
    hooks = FeatureHooks(distiller.teacher, paths, "teacher") if paths else None
    try:
        logits, _ = distiller.teacher_forward(x)
        feats = hooks.take() if hooks is not None else {}
    finally:
        if hooks is not None:
            hooks.remove()
    return logits, feats
