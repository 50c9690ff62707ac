"""A packed group: K jobs of a sweep in one process, one thread each, taking turns.

Only the member that holds the turn computes; it hands the turn to the next member (round robin) each
time it asks for a training batch. On handing over, the member's torch random state (CPU, and CUDA when
in use) is saved and the next member's put back, and Hydra's job config (a process-wide singleton) is
set to the next member's, so each member draws exactly the random numbers it draws alone.

Batches are shared by key (the data seed of the stage's epoch) and position: the first member to ask
for one prepares it from its own iterator, the others take it; a batch is dropped once no member still
needs it. A member whose iterator is behind (another member prepared the batches it skipped) draws the
skipped ones itself, so its data is always its own iterator's.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch

TEACHER_STAGE = "teacher"  # kdrun.training.teacher's stage name: trained within one turn, not shared
_local = threading.local()


def current() -> Optional["Member"]:
    """The packed member this thread runs (None outside a packed group)."""
    return getattr(_local, "member", None)


@dataclass(eq=False)
class Entry:
    """One shared training batch and the teacher outputs computed on it (by teacher_forward kind)."""
    epoch: int
    position: int
    batch: tuple
    takers: set = field(default_factory=set)
    teacher: dict = field(default_factory=dict)


@dataclass(eq=False)
class Member:
    number: int  # the job's number in the sweep
    group: "Group"
    hydra: Any = None  # HydraConfig's content for this job, set while it holds the turn
    rng: Optional[torch.Tensor] = None
    cuda_rng: Optional[list] = None
    alive: bool = True
    cursor: Optional[tuple[int, int]] = None  # (epoch, position) of the batch it took last
    batch: Optional[Entry] = None  # the batch it is training on
    distiller: Any = None  # its method, once it asked for teacher outputs (the features it reads)


class Group:
    def __init__(self) -> None:
        self.members: list[Member] = []
        self.holder: Optional[Member] = None
        self.entries: dict[tuple, Entry] = {}
        self.cond = threading.Condition()
        self.stop_signal: Optional[int] = None  # a signal the launcher received: members stop at their next turn

    def add(self, number: int, hydra=None) -> Member:
        member = Member(number, self, hydra, torch.get_rng_state())
        self.members.append(member)
        if self.holder is None:
            self.holder = member  # the first member computes first
        return member

    def alive(self) -> list[Member]:
        return [m for m in self.members if m.alive]

    # Turns

    def run(self, member: Member, target: Callable[[], Any]) -> Any:
        """The body of a member's thread: wait for its first turn, run `target`, leave the turn order."""
        _local.member = member
        try:
            with self.cond:
                self.cond.wait_for(lambda: self.holder is member)
            self._resume(member)
            return target()
        finally:
            self.leave(member)
            _local.member = None

    def turn(self, member: Member) -> None:
        """Hand the turn to the next member and wait for it to come back."""
        with self.cond:
            following = self._next(member)
            if following is not member:
                self._suspend(member)
                self.holder = following
                self.cond.notify_all()
                self.cond.wait_for(lambda: self.holder is member)
                resumed = True
            else:
                resumed = False
        if resumed:
            self._resume(member)
        if self.stop_signal is not None:
            from kdrun.training.signals import RunInterrupted

            raise RunInterrupted(self.stop_signal)

    def leave(self, member: Member) -> None:
        with self.cond:
            member.alive = False
            member.batch = None
            self._prune()
            if self.holder is member:
                following = self._next(member)
                self.holder = following if following is not member else None
            self.cond.notify_all()

    def stop(self, signum: int) -> None:
        self.stop_signal = signum

    def _next(self, member: Member) -> Member:
        k = self.members.index(member)
        ring = self.members[k + 1:] + self.members[:k]
        return next((m for m in ring if m.alive), member)

    @staticmethod
    def _suspend(member: Member) -> None:
        member.rng = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            member.cuda_rng = torch.cuda.get_rng_state_all()

    @staticmethod
    def _resume(member: Member) -> None:
        from hydra.core.hydra_config import HydraConfig

        torch.set_rng_state(member.rng)
        if member.cuda_rng is not None:
            torch.cuda.set_rng_state_all(member.cuda_rng)
        if member.hydra is not None:
            HydraConfig.instance().cfg = member.hydra

    # Shared batches

    def batches(self, member: Member, own: Iterator, epoch: int, key: int) -> Iterator:
        position, drawn = 0, 0  # the next position; how many batches `own` has produced
        while True:
            self.turn(member)
            entry = self.entries.get((key, position))
            if entry is None:
                batch = None
                while drawn <= position:  # skipped positions were prepared by others: draw them to stay in step
                    batch = next(own, None)
                    drawn += 1
                    if batch is None:
                        break
                if batch is None:
                    member.batch = None
                    return
                entry = self.entries[(key, position)] = Entry(epoch, position, batch)
            entry.takers.add(member)
            member.cursor, member.batch = (epoch, position), entry
            self._prune()
            yield entry.batch
            position += 1

    def _prune(self) -> None:
        for k in [k for k, e in self.entries.items() if not any(self._needs(m, e) for m in self.members)]:
            del self.entries[k]

    @staticmethod
    def _needs(member: Member, entry: Entry) -> bool:
        """Whether `member` will take `entry` soon: it has not yet, and it is at most an epoch behind."""
        if not member.alive or member in entry.takers:
            return False
        if member.cursor is None:  # not at its first batch yet
            return True
        return member.cursor < (entry.epoch, entry.position) and entry.epoch - member.cursor[0] <= 1
