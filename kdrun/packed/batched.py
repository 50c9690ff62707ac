"""A packed group's students as one batched computation (`hydra.launcher.batch_students`: null, the
default, batches on a GPU only; true also on the CPU; false never).

Where the members' students have the same architecture and their methods train the whole student and
run it once per step on the batch (reading features through hooks, kdrun.models.features), the members
meet at each step's student forward (kdrun.packed.group's `meet`): the students' weights and buffers
are stacked along a new first dimension, each student's own tensors becoming views of the stack (its
optimiser, checkpoints and evaluation see its weights as before), and `torch.func.vmap` runs the
student over the stack: one set of kernels for K students instead of K.
Each member computes its own loss on its slices of the logits and features (its heads, memory banks
and teacher pass are its own); the members meet again at the backward, one backward of their losses
gives each student's gradient as a slice of the stack's, and each member's optimiser steps on its own.
After each epoch the members meet once more to score their students on the test split, batched alike.

Not bit-identical to the members run alone (the batched kernels sum in another order), so the CPU, where
packing promises bit-identical results, batches only when asked to; there results agree to float
rounding. Members that cannot batch (an input gradient, a strong view, a stage that trains part of the
student, a compiled student) compute alone, as in a packed group without batching. So do all members
under a PyTorch older than `CHECKED_TORCH`: on 2.6.0 a channels_last student's vmapped backward gave every
student but the first other weights (6.9e-3 apart after 4 steps, where 2.11 and 2.14 agree to 1e-7).
"""
from __future__ import annotations

import functools
import logging
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn

from kdrun.models.features import FeatureHooks
from kdrun.packed.group import TEACHER_STAGE, Group, current

log = logging.getLogger(__name__)
CHECKED_TORCH = "2.11"  # the oldest PyTorch on which batched students were checked against their runs alone


def batch_students(distiller, params: list, device: torch.device, stage: str, forward) -> None:
    """At a stage's start (kdrun.training.loop.fit): whether this member's student computes batched."""
    member = current()
    if member is None:
        return
    member.step = None
    member.batching = (distiller, architecture(distiller.student)) if batchable(
        member.group, distiller, params, device, stage, forward) else None


def batchable(group: Group, distiller, params: list, device: torch.device, stage: str, forward) -> bool:
    from kdrun.methods.base import Distiller

    on = group.batch_students if group.batch_students is not None else device.type == "cuda"
    if on and torch.__version__ < CHECKED_TORCH:
        if group.batch_students:
            say_too_old(str(torch.__version__))
        return False
    student = distiller.student
    trainable = [p for p in student.parameters() if p.requires_grad]
    own_hooks = len(distiller._student_hooks._handles) if distiller._student_hooks is not None else 0
    return bool(
        on and stage != TEACHER_STAGE
        and forward == distiller.forward_train  # not wrapped for several devices
        and type(distiller).forward_train is Distiller.forward_train  # the student runs once, on x
        and not distiller.input_gradients and not distiller.strong_view
        and not getattr(student, "_kdrun_compiled", False)
        and len(trainable) == len(list(student.parameters()))
        and {id(p) for p in trainable} <= {id(p) for p in params}  # the whole student trains (its heads may too)
        and not any(m._forward_pre_hooks for m in student.modules())
        and sum(len(m._forward_hooks) for m in student.modules()) == own_hooks)  # the method's feature hooks


@functools.lru_cache(maxsize=None)
def say_too_old(version: str) -> None:
    """Once (not once per member and stage)."""
    log.warning("hydra.launcher.batch_students=true: this PyTorch (%s) is older than %s, on which batched "
                "students were checked, so the students take turns. Upgrade PyTorch to batch them.", version,
                CHECKED_TORCH)


def architecture(student: nn.Module) -> tuple:
    """What students batched together have in common (the batched forward runs the first one's code)."""
    tensors = [*student.named_parameters(), *student.named_buffers()]
    return (type(student), repr(student)) + tuple((name, tuple(t.shape), t.dtype, t.device) for name, t in tensors)


def student_forward(distiller, x: torch.Tensor) -> torch.Tensor:
    """The student's logits on `x`: its own forward, or its slice of the group's batched forward."""
    member = current()
    batching = member.batching if member is not None else None
    if batching is None or batching[0] is not distiller or member.batch is None or not torch.is_grad_enabled():
        return distiller.student(x)
    # Keyed by the shared batch: the members' inputs are the same tensor values (the same batch, moved to
    # the device with the same speed settings, which members of a group share).
    key = ("student forward", id(member.batch), batching[1], distiller.student.training, tuple(x.shape), x.dtype)
    return member.group.meet(member, key, (distiller.student, x), forward_together)


def stacked_forward(student: nn.Module, params: dict, buffers: dict, x: torch.Tensor, reader=None,
                    randomness: str = "error") -> tuple[torch.Tensor, dict]:
    """`student`'s code run on `x` with each student's weights of the stack: (logits, features `reader`
    keeps), each with the students along the first dimension."""
    from torch.func import functional_call, vmap

    def one(params, buffers, x):
        logits = functional_call(student, (params, buffers), (x,))
        return logits, reader.take() if reader is not None else {}

    with warnings.catch_warnings():
        # adaptive pooling of channels_last maps runs once per student under vmap (torch has no batching
        # rule for its as_strided_): one small op of the forward, not worth torch's warning on every sweep
        warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet")
        return vmap(one, in_dims=(0, 0, None), randomness=randomness)(params, buffers, x)


@dataclass(eq=False)
class Step:
    """One batched forward whose backward is still to come."""
    stack: "Stack"
    leaves: dict  # name -> the stacked weights as the graph's leaves (their grads: every student's)


def forward_together(parts: dict) -> dict:
    members = list(parts)
    if len(members) == 1:
        student, x = parts[members[0]]
        return {members[0]: student(x)}
    students = [parts[m][0] for m in members]
    stack = stack_of(members, students)
    leaves = {name: t.detach().requires_grad_() for name, t in stack.params.items()}
    hooks = {m: m.batching[0]._student_hooks for m in members}
    paths = list(dict.fromkeys(p for h in hooks.values() if h is not None for p in h.paths))
    # The features the members' methods read, kept inside the batched forward (the students' own hooks
    # see only the first student's module run, and each member gets its slice below).
    reader = FeatureHooks(students[0], paths, "student") if paths else None
    try:
        logits, feats = stacked_forward(students[0], leaves, stack.buffers, parts[members[0]][1], reader,
                                        randomness="different")
    finally:
        if reader is not None:
            reader.remove()
    step, results = Step(stack, leaves), {}
    for member, student in zip(members, students):
        k = stack.students.index(student)
        member.step, results[member] = (step, k), logits[k]
        if hooks[member] is not None:  # in the order the hooks fired, as its own forward gives them
            hooks[member].features = {p: f[k] for p, f in feats.items() if p in hooks[member].paths}
    return results


def accuracy_on_test(distiller, data, speed, evaluate) -> float:
    """The student's test accuracy (`evaluate`, kdrun.training.loop's), or its share of the group's batched
    evaluation: the members' students score the test split in one vmapped forward per batch."""
    member = current()
    batching = member.batching if member is not None else None
    if batching is None or batching[0] is not distiller:
        return evaluate(distiller.student, data, data.test, speed=speed)
    key = ("test accuracy", batching[1], len(data.test))  # the members' test splits are the same (one dataset config)
    return member.group.meet(member, key, (distiller.student, data, speed, evaluate), score_together)


@torch.no_grad()
def score_together(parts: dict) -> dict:
    from kdrun.training.loop import evaluation_batch_size

    members = list(parts)
    if len(members) == 1:
        student, data, speed, evaluate = parts[members[0]]
        return {members[0]: evaluate(student, data, data.test, speed=speed)}
    students = [parts[m][0] for m in members]
    _, data, speed, _ = parts[members[0]]
    stack = stack_of(members, students)
    was_training = students[0].training
    students[0].eval()  # the batched forward runs its code: batch norms read the stack's running statistics
    correct = torch.zeros(len(stack.students), dtype=torch.long, device=data.device)
    try:
        for _, x, y in data.batches(data.test, evaluation_batch_size(data.device), shuffle=False):
            with speed.autocast():
                logits, _ = stacked_forward(students[0], stack.params, stack.buffers, speed.batch(x))
            correct += (logits.argmax(-1) == y).sum(-1)
    finally:
        students[0].train(was_training)
    n = max(len(data.test), 1)
    return {m: round(100.0 * correct[stack.students.index(s)].item() / n, 4) for m, s in zip(members, students)}


def backward(loss: torch.Tensor) -> None:
    """`loss.backward()`; after a batched forward, one backward with the other members' losses."""
    member = current()
    part = member.step if member is not None else None
    if part is None:
        loss.backward()
        return
    member.step = None
    member.group.meet(member, ("student backward", id(part[0])), (loss, part), backward_together)


def backward_together(parts: dict) -> dict:
    torch.autograd.backward([loss for loss, _ in parts.values()])
    for _, (step, k) in parts.values():
        for name, p in step.stack.students[k].named_parameters():
            grad = step.leaves[name].grad
            if grad is not None:
                p.grad = grad[k] if p.grad is None else p.grad + grad[k]
    return dict.fromkeys(parts)


class Stack:
    """The students' weights and buffers stacked along a new first dimension; each student's own
    parameters and buffers are views of it, so what its optimiser and batch norms update is the stack."""

    def __init__(self, students: list[nn.Module]):
        self.students = list(students)
        params = [dict(s.named_parameters()) for s in students]
        buffers = [dict(s.named_buffers()) for s in students]
        self.params = {n: torch.stack([p[n].detach() for p in params]) for n in params[0]}
        self.buffers = {n: torch.stack([b[n] for b in buffers]) for n in buffers[0]}
        for k, student in enumerate(students):
            for name, p in student.named_parameters():
                p.data = self.params[name][k]
            for name in self.buffers:
                owner, _, attr = name.rpartition(".")
                student.get_submodule(owner)._buffers[attr] = self.buffers[name][k]
            if not getattr(student, "_kdrun_saves_own_copies", False):
                student.register_state_dict_post_hook(own_copies)
                student._kdrun_saves_own_copies = True

    def holds(self, students: list[nn.Module]) -> bool:
        """Whether the stack is these students' (no other student's batch norms may see their batch), and
        their weights are (still) its views."""
        name, stacked = next(iter(self.params.items()))
        return len(students) == len(self.students) and all(
            s in self.students and s.get_parameter(name).data_ptr() == stacked[self.students.index(s)].data_ptr()
            for s in students)


def stack_of(members: list, students: list[nn.Module]) -> Stack:
    """The group's stack holding these members' students (built, their weights copied into it, on first need)."""
    group = members[0].group
    for stack in group.stacks:
        if stack.holds(students):
            return stack
    stack = Stack(students)
    group.stacks = [s for s in group.stacks if not set(s.students) & set(students)] + [stack]  # old ones: gone
    log.info("Packed jobs #%s: their %d students train as one batched computation (torch.func.vmap)",
             ", #".join(str(m.number) for m in members), len(members))
    return stack


def own_copies(module: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
    """A student's state dict holds its own tensors, not views of the stack (torch.save writes a view's
    whole storage: every member's weights)."""
    for key, value in state_dict.items():
        if key.startswith(prefix) and isinstance(value, torch.Tensor) and (
                value.untyped_storage().nbytes() > value.numel() * value.element_size()):
            state_dict[key] = value.clone()
