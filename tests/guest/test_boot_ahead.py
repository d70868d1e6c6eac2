"""Function scope, booted ahead: the guests of the next tests boot while a test
runs, each test still gets a fresh guest of its own configuration, and a
session that ends early leaves no guest and no file behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Each test records what its guest saw: a fresh root (no file of an earlier
# test's), whether it waited for its turn (booted ahead), its boot id, and the
# hook's variable and the memory of its configuration.
RECORD = """
import os, pathlib, pytest

LOG = pathlib.Path({log!r})

def record(name):
    fresh = not os.path.exists("/earlier-test")
    pathlib.Path("/earlier-test").write_text(name)
    waited = os.path.exists("/run/fakemachine/waiting")
    boot_id = pathlib.Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    memory = next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal"))
    hooked = os.environ.get("HOOKED", "-")
    (LOG / name).write_text(f"{{fresh}} {{waited}} {{boot_id}} {{hooked}} {{memory}}")

pytestmark = pytest.mark.fakemachine(volumes=[str(LOG)])
"""

OUTCOMES = """
from pytest_fakemachine import Image

def test_1_passes():
    record("1")

def test_2_fails():
    record("2")
    assert False

def test_3_skips():
    record("3")
    pytest.skip("in the guest")

@pytest.mark.xfail(strict=True)
def test_4_xfails():
    record("4")
    assert False

@pytest.mark.fakemachine(images={{"disk": Image({image!r})}})
def test_5_users_image():
    record("5")
"""


def _seen(log: Path) -> dict[str, list[str]]:
    """Per test: fresh, waited, boot id, HOOKED, MemTotal (kB)."""
    return {path.name: path.read_text().split() for path in sorted(log.iterdir())}


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Inner sessions that may boot ahead, with a TMPDIR of their own; their log dir."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("booting ahead needs an idle CPU: this host gives one")
    # Started from an xdist worker, an inner session would take the worker's
    # share of the CPUs (one here) and boot nothing ahead.
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    log = tmp_path / "log"
    log.mkdir()
    return log


def test_each_test_gets_a_fresh_guest_booted_ahead_with_the_same_outcomes(
    pytester: pytest.Pytester, inner: Path, tmp_path: Path
) -> None:
    image = tmp_path / "users.img"
    image.write_bytes(b"\0" * 4096)
    pytester.makepyfile(RECORD.format(log=str(inner)) + OUTCOMES.format(image=str(image)))
    outcomes = {"passed": 2, "failed": 1, "skipped": 1, "xfailed": 1}
    pytester.runpytest_subprocess("-o", "fakemachine_boot_ahead=false").assert_outcomes(**outcomes)
    off = _seen(inner)
    assert [seen[1] for seen in off.values()] == ["False"] * 5  # none waited for its turn
    pytester.runpytest_subprocess().assert_outcomes(**outcomes)
    on = _seen(inner)
    assert all(seen[0] == "True" for seen in on.values())  # each guest fresh
    assert len({seen[2] for seen in on.values()}) == 5  # and its own
    # The first boots at its turn (nothing ran before it); the next are
    # booted ahead, but for the one with a user's image (held until its turn).
    assert {name: seen[1] for name, seen in on.items()} == {
        "1": "False", "2": "True", "3": "True", "4": "True", "5": "False"
    }  # fmt: skip


def test_the_configure_hook_runs_at_the_turn_and_its_machine_is_the_tests(
    pytester: pytest.Pytester, inner: Path
) -> None:
    pytester.makeconftest(
        f"""
        import pathlib

        def pytest_fakemachine_configure(machine, item):
            with open({str(inner.parent / "hook")!r}, "a") as f:
                f.write(item.name + " ")
            if item.name == "test_b":
                machine.env["HOOKED"] = "b"
                machine.memory = "1G"
        """
    )
    pytester.makepyfile(
        RECORD.format(log=str(inner))
        + "\n".join(f"def test_{n}():\n    record('{n}')\n" for n in "abc")
    )
    pytester.runpytest_subprocess().assert_outcomes(passed=3)
    seen = _seen(inner)
    assert (inner.parent / "hook").read_text() == "test_a test_b test_c "
    # b's guest booted ahead had the wrong machine: b got a guest of its own.
    assert seen["b"][1] == "False"
    assert seen["b"][3] == "b"
    assert int(seen["b"][4]) < 1024 * 1024 < int(seen["c"][4])
    # c's machine is the one booted ahead: the hook changed nothing.
    assert (seen["c"][1], seen["c"][3]) == ("True", "-")


# Counts the session's guests before the plugin's own session finish (the
# conftest's hook runs first) and after it, while the process still lives
# (after its death, the watchdog would clean up anyway).
COUNT_GUESTS = """
import os, tempfile
from pytest_fakemachine import in_fakemachine
from pytest_fakemachine.backend import leftovers

def pytest_sessionfinish(session):
    if not in_fakemachine():
        with open({alive!r}, "w") as f:
            f.write(str(len(leftovers(os.getpid()))))

def pytest_unconfigure(config):
    if not in_fakemachine():
        with open({left!r}, "w") as f:
            f.write(f"{{len(leftovers(os.getpid()))}} {{os.listdir(tempfile.gettempdir())}}")
"""


@pytest.mark.parametrize("how", ["-x", "KeyboardInterrupt"])
def test_a_session_ended_early_leaves_no_guest_booted_ahead(
    pytester: pytest.Pytester, inner: Path, tmp_path: Path, how: str
) -> None:
    alive, left = tmp_path / "alive", tmp_path / "left"
    pytester.makeconftest(COUNT_GUESTS.format(alive=str(alive), left=str(left)))
    if how == "-x":
        first = "@pytest.mark.fakemachine\ndef test_a():\n    assert False\n"
    else:  # a host test that interrupts the session while the next guest boots
        first = (
            "@pytest.mark.fakemachine\ndef test_a():\n    pass\n\n"
            "def test_interrupt():\n"
            "    import signal, time\n"
            "    from pytest_fakemachine.backend import leftovers\n"
            "    deadline = time.monotonic() + 120\n"
            "    while not leftovers(os.getpid()) and time.monotonic() < deadline:\n"
            "        time.sleep(0.05)\n"
            # As a shell's background job (`&`) would have it, SIGINT may be
            # inherited ignored: the interrupt relies on Python's handler.
            "    signal.signal(signal.SIGINT, signal.default_int_handler)\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
        )
    pytester.makepyfile(
        "import os, pytest\n\n" + first + "\n"
        "@pytest.mark.fakemachine\ndef test_b():\n    pass\n\n"
        "@pytest.mark.fakemachine\ndef test_c():\n    pass\n"
    )
    result = pytester.runpytest_subprocess(*(["-x"] if how == "-x" else []))
    if how == "-x":
        result.assert_outcomes(failed=1)
    else:
        result.stdout.fnmatch_lines(["*KeyboardInterrupt*"])
        result.assert_outcomes(passed=1)
    assert int(alive.read_text()) > 0, "no guest was booted ahead"
    assert left.read_text() == "0 []"


def test_show_boot_shows_a_guest_booted_ahead_at_its_tests_turn(
    pytester: pytest.Pytester, inner: Path
) -> None:
    pytester.makepyfile(
        "import pytest\n\npytestmark = pytest.mark.fakemachine\n\n"
        "def test_a():\n    pass\n\ndef test_b():\n    pass\n"
    )
    result = pytester.runpytest_subprocess("-v", "--fakemachine-show-boot")
    result.assert_outcomes(passed=2)
    out = result.stdout.str()
    before_b, _, after_b = out.partition("::test_b ")
    _, _, during_a = before_b.partition("::test_a ")
    # One boot's console each, b's (booted during a) after b's name.
    assert during_a.count("Welcome to") == 1
    assert after_b.count("Welcome to") == 1


def test_a_guest_that_died_before_its_turn_is_replaced(
    pytester: pytest.Pytester, inner: Path
) -> None:
    flag = pytester.path / "die-once"
    flag.touch()
    # The guest booted ahead dies while it starts its pytest; the first test
    # waits until it has, so the second's turn finds it dead.
    pytester.makeconftest(
        f"""
        import os
        from pytest_fakemachine import in_fakemachine

        def pytest_configure(config):
            if in_fakemachine() and os.path.exists({str(flag)!r}):
                with open("/run/fakemachine/guest.json") as f:
                    booted_ahead = '"go"' in f.read()
                if booted_ahead:
                    os.remove({str(flag)!r})
                    os._exit(3)
        """
    )
    pytester.makepyfile(
        f"""
        import os, time, pytest

        pytestmark = pytest.mark.fakemachine

        def test_a():
            deadline = time.monotonic() + 300
            while os.path.exists({str(flag)!r}) and time.monotonic() < deadline:
                time.sleep(0.1)

        def test_b():
            pass
        """
    )
    pytester.runpytest_subprocess().assert_outcomes(passed=2)
    assert not flag.exists()
