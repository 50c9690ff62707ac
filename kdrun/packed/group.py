"""A packed group: K jobs of a sweep in one process and one OS thread, taking turns.

Each member runs in its own greenlet (a coroutine with its own stack): only the member that holds the
turn computes, and it hands the turn back to the group's scheduler each time it asks for a training
batch; the scheduler resumes the next member (round robin). One OS thread means one intra-op thread
pool for every member (threads each got their own OpenMP team, which made every step ~20 % slower).
On handing over, the member's torch random state (CPU, and CUDA when in use), grad and autocast modes are saved
and the next member's put back, and Hydra's job config (a process-wide singleton) is set to the next
member's, so each member draws exactly the random numbers it draws alone.

Batches are shared by key (the data seed of the stage's epoch) and position: the first member to ask
for one prepares it from its own iterator, the others take it; a batch is dropped once no member still
needs it. A member whose iterator is behind (another member prepared the batches it skipped) draws the
skipped ones itself, so its data is always its own iterator's.

Members can also meet to compute one thing together (`meet`; kdrun.packed.batched batches their
students' forwards and backwards so): each brings its part and waits; once every member of the group
waits at a meeting, the last to arrive at each computes it, in its own turn and state, for all.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterator, Optional

import torch
from greenlet import getcurrent, greenlet

TEACHER_STAGE = "teacher"  # kdrun.training.teacher's stage name: trained within one turn, not shared
_running: Optional["Member"] = None  # the member whose greenlet computes now


def autocast_devices() -> tuple[str, ...]:
    return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)


def current() -> Optional["Member"]:
    """The packed member that computes now (None outside a packed group)."""
    return _running


@dataclass(eq=False)
class Entry:
    """One shared training batch and the teacher outputs computed on it (by teacher_forward kind)."""
    epoch: int
    position: int
    batch: tuple
    takers: set = field(default_factory=set)
    teacher: dict = field(default_factory=dict)


@dataclass(eq=False)
class Meeting:
    """Members computing one thing together: `compute(parts)` maps each member's part to its result."""
    compute: Callable[[dict], dict]
    parts: dict = field(default_factory=dict)  # member -> its part, in the order they arrived
    host: Optional["Member"] = None  # the member that computes it (once every member waits)
    results: Optional[dict] = None
    error: Optional[BaseException] = None

    def waits(self, member: "Member") -> bool:
        return self.results is None and self.error is None and self.host is not member


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
    grad_enabled: bool = True
    autocast: dict = field(default_factory=dict)  # device type -> autocast on; set inside a forward, where members meet
    waiting: Optional[Meeting] = None
    batching: Any = None  # the method whose student computes batched with the others' (kdrun.packed.batched)
    step: Any = None  # its part of the batched forward whose backward is still to come
    coroutine: Optional[greenlet] = None
    result: Any = None
    error: Optional[BaseException] = None


class Group:
    def __init__(self, batch_students: Optional[bool] = None) -> None:
        self.members: list[Member] = []
        self.entries: dict[tuple, Entry] = {}
        self.meetings: dict[Hashable, Meeting] = {}
        self.batch_students = batch_students  # None: on a GPU (kdrun.packed.batched)
        self.stacks: list = []  # the students' stacked weights (kdrun.packed.batched.Stack), one per set of students
        self.scheduler: Optional[greenlet] = None
        self.stop_signal: Optional[int] = None  # a signal received: members stop at their next turn
        self.halted: Optional[SystemExit] = None  # a member's exit not asked by kdrun (submitit's requeue)

    def add(self, number: int, hydra=None) -> Member:
        member = Member(number, self, hydra, torch.get_rng_state())
        self.members.append(member)
        return member

    def alive(self) -> list[Member]:
        return [m for m in self.members if m.alive]

    # Turns

    def run(self, targets: dict[Member, Callable[[], Any]]) -> None:
        """Run every member's `target` to its end, taking turns; each member's return value or exception
        is kept in `member.result` / `member.error`. SIGINT and SIGTERM stop every member at its next
        turn (the one computing at once, with RunInterrupted), so each records how it ended."""
        global _running
        self.scheduler = getcurrent()
        for member, target in targets.items():
            member.coroutine = greenlet(lambda m=member, t=target: self._body(m, t), parent=self.scheduler)
        with self._signals_stop_members():
            while True:
                ready = [m for m in self.members if m.alive and m.coroutine is not None]
                if not ready:
                    break
                ran = False
                for member in ready:
                    if not member.alive or self._blocked(member):
                        continue
                    ran = True
                    _running = member
                    try:
                        member.coroutine.switch()
                    finally:
                        _running = None
                if not ran:  # every member waits at a meeting
                    self._open_meetings()

    def _body(self, member: Member, target: Callable[[], Any]) -> None:
        try:
            self._resume(member)
            member.result = target()
        except BaseException as e:  # noqa: BLE001  (SystemExit of an interrupted job; the others go on)
            member.error = e
            if isinstance(e, SystemExit) and self.stop_signal is None and self.halted is None:
                self.halted = e  # e.g. submitit requeues the job: every member stops at its next turn
        finally:
            self.leave(member)

    def turn(self, member: Member) -> None:
        """Hand the turn to the next member and wait for it to come back."""
        if len(self.alive()) > 1:
            self._switch(member)
        self._check_stop()

    def meet(self, member: Member, key: Hashable, part: Any, compute: Callable[[dict], dict]) -> Any:
        """`member`'s result of the meeting `key`, computed by `compute({member: part, ...})` with the parts
        of the members that come to it before every member of the group waits at a meeting."""
        meeting = self.meetings.setdefault(key, Meeting(compute))
        meeting.parts[member] = part
        member.waiting = meeting
        try:
            if all(self._blocked(m) for m in self.alive() if m is not member):
                self._open_meetings()  # the last to arrive: no switch needed
            while meeting.waits(member):
                self._switch(member)
                self._check_stop()
            if meeting.host is member:
                del self.meetings[key]
                try:
                    meeting.results = meeting.compute(meeting.parts)
                except BaseException as e:
                    meeting.error = e
                    raise
            if meeting.error is not None:
                raise RuntimeError(f"packed job #{meeting.host.number} failed computing for its group: "
                                   f"{type(meeting.error).__name__}: {meeting.error}") from meeting.error
            return meeting.results[member]
        finally:
            member.waiting = None

    def _blocked(self, member: Member) -> bool:
        """Whether `member` waits at a meeting still to be computed (a stop wakes every member)."""
        waiting = member.waiting
        return (waiting is not None and waiting.waits(member) and self.stop_signal is None
                and self.halted is None)

    def _open_meetings(self) -> None:
        """Every member waits: each meeting is computed by its last arrival."""
        for meeting in self.meetings.values():
            if meeting.host is None:
                meeting.host = list(meeting.parts)[-1]

    def _switch(self, member: Member) -> None:
        self._suspend(member)
        self.scheduler.switch()
        self._resume(member)

    def _check_stop(self) -> None:
        if self.stop_signal is not None:
            from kdrun.training.signals import RunInterrupted

            raise RunInterrupted(self.stop_signal)
        if self.halted is not None:
            raise SystemExit(self.halted.code)

    def leave(self, member: Member) -> None:
        member.alive = False
        member.batch = None
        self._prune()

    def stop(self, signum: int) -> None:
        self.stop_signal = signum

    def _signals_stop_members(self):
        """SIGINT/SIGTERM: every member stops at its next turn, the one computing now at once."""
        from kdrun.training.signals import RunInterrupted, handling

        def handler(signum, frame):
            if self.stop_signal is None:
                self.stop(signum)
                if _running is not None:
                    raise RunInterrupted(signum)

        return handling(handler)

    @staticmethod
    def _suspend(member: Member) -> None:
        member.rng = torch.get_rng_state()
        member.grad_enabled = torch.is_grad_enabled()
        member.autocast = {d: torch.is_autocast_enabled(d) for d in autocast_devices()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            member.cuda_rng = torch.cuda.get_rng_state_all()

    @staticmethod
    def _resume(member: Member) -> None:
        from hydra.core.hydra_config import HydraConfig

        torch.set_rng_state(member.rng)
        torch.set_grad_enabled(member.grad_enabled)
        for device, on in member.autocast.items():
            torch.set_autocast_enabled(device, on)
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
