"""Packed sweeps (`hydra/launcher=packed`): the jobs of a sweep that can share work run in one process,
one greenlet per job on one thread, taking turns at batch boundaries (`kdrun.packed.group`). Each member runs kdrun's
normal code path; the training loop asks this module for its batches and its teacher outputs, which a
member of a group shares with the others, and for its student's forward and backward, which members
compute together where they batch (kdrun.packed.batched); outside a group they are the loop's own.
"""
from __future__ import annotations

from typing import Iterator, Optional

from kdrun.packed.group import TEACHER_STAGE, current


def shared_batches(batches: Iterator, *, stage: str, epoch: int, key: int) -> Iterator:
    """The training batches of (stage, epoch): `batches` alone; in a packed group, the batch the first
    member prepared for the same (key, position), and the member's turn to compute in between."""
    member = current()
    if member is None or stage == TEACHER_STAGE:  # the teacher trains within one turn (it holds the cache's lock)
        return batches
    return member.group.batches(member, batches, epoch, key)


def teacher_pass(stage: str, cache) -> Optional[object]:
    """The stage's teacher-output cache: `cache` alone; in a packed group, one teacher pass per batch for
    every member (which keeps `cache`, its own, behind it)."""
    member = current()
    if member is None or stage == TEACHER_STAGE:
        return cache
    from kdrun.packed.teacher import SharedTeacherPass

    return SharedTeacherPass(member, cache)


def batch_students(distiller, params: list, device, stage: str, forward) -> None:
    """At a stage's start: whether a packed member's student computes batched with the others'
    (kdrun.packed.batched); nothing outside a group."""
    if current() is not None:
        from kdrun.packed.batched import batch_students as decide

        decide(distiller, params, device, stage, forward)


def student_forward(distiller, x):
    """The student's logits: its own forward, or its slice of a packed group's batched forward."""
    member = current()
    if member is None or member.batching is None:
        return distiller.student(x)
    from kdrun.packed.batched import student_forward as batched

    return batched(distiller, x)


def backward(loss) -> None:
    """`loss.backward()`, or one backward with the other members' losses after a batched forward."""
    member = current()
    if member is None or member.step is None:
        loss.backward()
        return
    from kdrun.packed.batched import backward as together

    together(loss)


def accuracy_on_test(distiller, data, speed, evaluate) -> float:
    """`evaluate(distiller.student, data, data.test, speed=speed)`, or the student's share of a packed
    group's batched evaluation (kdrun.packed.batched)."""
    member = current()
    if member is None or member.batching is None:
        return evaluate(distiller.student, data, data.test, speed=speed)
    from kdrun.packed.batched import accuracy_on_test as batched

    return batched(distiller, data, speed, evaluate)


def this_member():
    """A logging filter that keeps the records the calling member logs (a member's log file its own lines)."""
    import threading

    member, ident = current(), threading.get_ident()
    return lambda record: record.thread == ident and current() is member
