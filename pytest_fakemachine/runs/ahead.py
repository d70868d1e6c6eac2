"""Function scope, booted ahead: while a test runs, the guests of the tests
after it boot on idle CPUs, up to the point where they wait for their turn.

A guest booted ahead goes as far as its test's setup: kernel, systemd, the
job, the guest-side pytest with its plugins and conftests, the collection of
its test (as pytest collects every test before it runs the first). Then its
runner waits on a serial line (:class:`GoLine`) until the host hands the
guest to its test. What cannot be done ahead is not:

- the ``pytest_fakemachine_configure`` hook runs at the test's turn, on a
  machine built then; the guest booted ahead is used only if that machine
  equals the one it was booted with (else it is killed and the test boots
  its own);
- a test with a user's image (``Image(path)``) is not booted ahead: another
  test may hold or change that file until the turn;
- ``--fakemachine-show-boot`` shows the console of a guest booted ahead when
  its test starts (all of it so far at once), never inside another test's
  output: only the test's own wait for its guest echoes the console.

Only with an idle CPU: the guests that use a CPU (the current test's, and
those still booting ahead) stay within the CPUs the session may use (all of
them, or an equal share per pytest-xdist worker); a guest that waits uses
none. A guest booted ahead for a test that does not come (``-x``, Ctrl-C, a
test that failed without a guest) is killed and its files removed.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .._config import DEFAULT_BOOT_TIMEOUT
from .._machine import Machine
from .run import GuestRun

__all__ = ["Ahead", "BootAhead", "cpu_share", "fingerprint"]

_MAX_MISSES = 3  # guests booted ahead in vain (a configure hook...) before it stops
_LOOKAHEAD_ITEMS = 8  # how far past the current test to look for tests to boot ahead for


def cpu_share() -> int:
    """The CPUs this process may keep busy: all it may run on, or with
    pytest-xdist an equal share per worker (at least one)."""
    cpus = len(os.sched_getaffinity(0))
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    return max(1, cpus // int(workers)) if workers.isdigit() and int(workers) else cpus


def fingerprint(machine: Machine, image_dir: Path) -> tuple[Any, ...]:
    """What a guest is booted with; equal for two machines that boot alike.

    Images made for the test (in ``image_dir``) count by name and size.
    """
    images = []
    for image in machine.images:
        path = image.path
        fresh = path.parent == image_dir
        size = path.stat().st_size if fresh else None
        images.append((image.label, path.name if fresh else str(path), size))
    return (machine.backend, repr(machine.memory), repr(machine.scratch), machine.network,
            repr(machine.timeout), repr(machine.boot_timeout), sorted(machine.env.items()),
            repr(machine.kernel), bool(machine.raid_benchmarks), images,
            list(machine.volumes), list(machine.extra_kernel_args))  # fmt: skip


def _settle(run: GuestRun, tick: Callable[[], None] | None) -> None:
    """At its test's turn, let a guest still booting ahead reach its wait or
    end: one that dies on the way (its runner failed to start) must count as
    gone, not hand the test a guest powering off. Bounded by the default boot
    limit: a guest slower than that is given up and the test boots its own.
    ``tick`` runs meanwhile, as in any wait for a guest: the next tests' guests
    boot ahead on the CPU the previous test left (without it, booting ahead
    went one guest at a time: 10 trivial tests took 25 s instead of 15)."""
    guest, go = run.guest, run.go
    deadline = time.monotonic() + DEFAULT_BOOT_TIMEOUT
    while guest is not None and go is not None and not go.waiting() and not guest.exited():
        if time.monotonic() > deadline:
            guest.kill()
            return
        if tick is not None:
            tick()
        guest.wait(0.02)


class _UsersImage(Exception):
    pass


@dataclass(eq=False)
class Ahead:
    item: pytest.Item
    run: GuestRun
    booted_as: tuple[Any, ...]
    idle: bool = False


class BootAhead:
    """The guests booted ahead for the tests to come, in one pytest session.

    ``prepare(item)`` makes an unstarted run for ``item`` (its machine from
    the options and the marker alone) that waits on a :class:`GoLine`.
    """

    def __init__(self, slots: int, prepare: Callable[[pytest.Item], GuestRun]) -> None:
        self.slots = slots
        self.prepare = prepare
        self.pool: dict[str, Ahead] = {}
        self.upcoming: list[pytest.Item] = []
        self.given_up: set[str] = set()  # could not be booted ahead: not tried again
        self.hits = 0
        self.misses = 0
        self._order: dict[str, int] = {}  # nodeid -> index in session.items

    def plan(
        self, current: pytest.Item, queued: list[int] | None, wants: Callable[[pytest.Item], bool]
    ) -> None:
        """The tests to boot ahead for: the first ones after ``current`` that
        ``wants`` (a fresh guest), one per CPU. ``queued``: the indexes of the
        tests still to run on an xdist worker (None: every later test).
        Guests booted for others are killed: their test is not coming soon."""
        items = current.session.items
        if queued is None:
            if not self._order:
                self._order = {item.nodeid: i for i, item in enumerate(items)}
            start = self._order.get(current.nodeid, len(items)) + 1
            queued = list(range(start, min(start + _LOOKAHEAD_ITEMS, len(items))))
        self.upcoming = []
        for index in queued[:_LOOKAHEAD_ITEMS]:
            item = items[index]
            if len(self.upcoming) == self.slots:
                break
            if item is not current and item.nodeid not in self.given_up and wants(item):
                self.upcoming.append(item)
        keep = {current.nodeid, *(item.nodeid for item in self.upcoming)}
        for nodeid in [n for n in self.pool if n not in keep]:
            self.discard(nodeid)

    def tick(self, runs: Iterable[GuestRun]) -> None:
        """Note guests that now wait; boot one more ahead if a CPU is idle.

        ``runs``: the session's runs of tests under way; their guests use a
        CPU, and at least one is busy (a host test, if none).
        """
        alive = {run for run in runs if run.guest is not None and not run.guest.exited()}
        busy = max(1, len(alive))
        booting = 0
        for ahead in self.pool.values():
            guest = ahead.run.guest
            if not ahead.idle and ahead.run.go is not None and ahead.run.go.waiting():
                ahead.idle = True
                if guest is not None:
                    guest.idle()
            if not ahead.idle and guest is not None and not guest.exited():
                booting += 1
        if busy + booting >= self.slots or self.misses >= self.hits + _MAX_MISSES:
            return
        for item in self.upcoming:
            if item.nodeid not in self.pool:
                self._launch(item)
                return

    def _launch(self, item: pytest.Item) -> None:
        try:
            run = self.prepare(item)
        except Exception:  # the test's own turn reports what is wrong
            self.given_up.add(item.nodeid)
            return
        run.boot_ahead()  # a guest that ran no test has no result
        try:
            if any(image.path.parent != run.image_dir for image in run.machine.images):
                raise _UsersImage  # another test may hold or change it until the turn
            booted_as = fingerprint(run.machine, run.image_dir)
            run.start()
        except Exception:
            self.given_up.add(item.nodeid)
            _close(run)
            return
        except BaseException:  # Ctrl-C: nothing may keep running
            _close(run)
            raise
        self.pool[item.nodeid] = Ahead(item, run, booted_as)

    def process_groups(self) -> set[int]:
        """The process groups of the guests waiting for their tests."""
        guests = (ahead.run.guest for ahead in self.pool.values())
        return {g.process_group for g in guests if g is not None and g.process_group is not None}

    def take(self, item: pytest.Item) -> Ahead | None:
        return self.pool.pop(item.nodeid, None)

    def hand_over(self, ahead: Ahead, new: GuestRun) -> GuestRun:
        """The run for ``ahead``'s test: ``ahead``'s, if the machine of ``new``
        (an unstarted run built at the test's turn, with the configure hook, in
        ``ahead``'s image directory) boots as it was booted; else ``new``, and
        the guest booted ahead is gone."""
        run = ahead.run
        _settle(run, new.tick)
        # A guest that died meanwhile (e.g. past its boot limit on a busy
        # machine) says nothing of the test: the test boots its own.
        gone = run.guest is None or run.guest.exited()
        if gone or fingerprint(new.machine, new.image_dir) != ahead.booted_as:
            self.misses += 1
            run.keep_image_dir = True  # the new machine's images are in it
            _close(run)
            return new
        self.hits += 1
        new.keep_image_dir = True  # it is the image directory of ``run``
        new.close(graceful=False)  # nothing started: its wiring (the shell's pipes) goes
        run.take_over(new)
        return run

    def discard(self, nodeid: str) -> None:
        ahead = self.pool.pop(nodeid, None)
        if ahead is not None:
            _close(ahead.run)

    def drop(self, ahead: Ahead) -> None:
        """Kill a guest taken for its test that will not run in it."""
        _close(ahead.run)

    def close(self) -> None:
        for nodeid in list(self.pool):
            self.discard(nodeid)


def _close(run: GuestRun) -> None:
    """Kill a guest that never ran its test, and remove all its files (also
    with --fakemachine-keep: there is nothing of a test's in them)."""
    workdir = run.session.workdir if run.session is not None else None
    try:
        run.close(graceful=False)
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
