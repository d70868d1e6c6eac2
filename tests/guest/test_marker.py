"""Marked tests run in a real guest and report their true outcome on the host."""

from __future__ import annotations

import os
import re
import socketserver
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

# Every outcome pytest knows, in one module: run once in one shared guest and
# once on the host (plugin disabled), the two junitxml files must agree.
OUTCOMES = """
import logging, os, sys, pytest

pytestmark = pytest.mark.fakemachine(scope="module")

@pytest.fixture
def broken_setup():
    raise RuntimeError("setup went wrong")

@pytest.fixture
def broken_teardown():
    yield
    raise RuntimeError("teardown went wrong")

def test_pass(tmp_path, record_property):
    (tmp_path / "f").write_text("x")
    record_property("answer", 42)
    print("to stdout"); print("to stderr", file=sys.stderr)
    logging.getLogger("t").warning("a log line")

def test_fail():
    x = 41
    print("captured before failing")
    assert x == 42

def test_skip():
    pytest.skip("not today")

@pytest.mark.skipif("os.getuid() != 0", reason="needs root")
def test_skipif_root():
    pass

@pytest.mark.xfail(reason="known bug")
def test_xfail():
    assert False

@pytest.mark.xfail(reason="fixed meanwhile")
def test_xpass():
    pass

@pytest.mark.xfail(strict=True, reason="must fail")
def test_xpass_strict():
    pass

def test_setup_error(broken_setup):
    pass

def test_teardown_error(broken_teardown):
    pass

@pytest.mark.parametrize("n", [1, 2, 3])
def test_param(n, from_conftest):
    assert from_conftest == "conftest" and n < 3

class TestClass:
    def test_method(self):
        assert True
"""

CONFTEST = """
import pytest

@pytest.fixture
def from_conftest():
    return "conftest"
"""


def _cases(path: Path) -> dict[str, tuple[str, str]]:
    """junitxml testcases: name -> (outcome tag, message)."""
    cases = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname')}.{case.get('name')}"
        outcome = [child for child in case if child.tag in ("failure", "error", "skipped")]
        tags = ",".join(f"{c.tag}:{c.get('message', '')}" for c in outcome)
        props = [(p.get("name"), p.get("value")) for p in case.iter("property")]
        cases[name] = (tags or "passed", repr(props))
    return cases


def test_every_outcome_matches_a_local_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_outcomes=OUTCOMES)
    pytester.makeconftest(CONFTEST)
    guest = pytester.runpytest_subprocess("-rA", "--junitxml=guest.xml", "-o",
                                          "junit_family=xunit1")  # fmt: skip
    local = pytester.runpytest_subprocess("-p", "no:fakemachine", "--junitxml=local.xml",
                                          "-o", "junit_family=xunit1")  # fmt: skip
    outcomes = {"passed": 6, "failed": 3, "skipped": 1, "xfailed": 1, "xpassed": 1, "errors": 2}
    guest.assert_outcomes(**outcomes)  # the guest runs as root: test_skipif_root passes
    host_is_root = os.getuid() == 0
    if not host_is_root:  # an ordinary user's local run skips it
        outcomes.update(passed=5, skipped=2)
    local.assert_outcomes(**outcomes)
    guest.stdout.fnmatch_lines([
        "*ERROR at setup of test_setup_error*",
        "E       RuntimeError: setup went wrong",
        "*ERROR at teardown of test_teardown_error*",
        "E       RuntimeError: teardown went wrong",
        "*def test_fail():*",
        "E       assert 41 == 42",
        "*Captured stdout call*",
        "captured before failing",
        "*XPASS(strict)*must fail*",
    ])  # fmt: skip
    guest.stdout.fnmatch_lines(["PASSED test_outcomes.py::test_pass", "SKIPPED*not today*"])
    guest_cases = _cases(pytester.path / "guest.xml")
    local_cases = _cases(pytester.path / "local.xml")
    if not host_is_root:
        assert guest_cases.pop("test_outcomes.test_skipif_root")[0] == "passed"
        assert local_cases.pop("test_outcomes.test_skipif_root")[0].startswith("skipped:")
    assert guest_cases == local_cases


def test_marked_test_runs_in_uml_and_unmarked_on_the_host(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        f"""
        import os, pytest
        from pytest_fakemachine import in_fakemachine

        def uml():
            with open("/proc/cpuinfo") as f:
                return "User Mode Linux" in f.read()

        @pytest.mark.fakemachine(memory="1G", env={{"WHERE": "guest"}})
        def test_guest():
            assert uml() and in_fakemachine() and os.getuid() == 0
            assert os.environ["WHERE"] == "guest"
            assert os.getcwd() == {str(pytester.path)!r}

        def test_host():
            assert not uml() and not in_fakemachine()
        """
    )
    # The guest runs with --no-summary (nobody reads its terminal; a plugin's
    # summary hook imported all of hypothesis there). Until pytest 9.2 that skipped
    # every pytest_terminal_summary hook; since pytest-dev/pytest#14730 it skips
    # only pytest's own sections and plugins' hooks run. The host's always run.
    pytester.makeconftest(
        """
        from pytest_fakemachine import in_fakemachine

        def pytest_terminal_summary(config):
            where = "guest" if in_fakemachine() else "host"
            (config.rootpath / f"{where}-summary").write_text("ran")
        """
    )
    result = pytester.runpytest_subprocess("-v", "--durations=0", "--durations-min=0")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_guest PASSED*", "*test_host PASSED*"])
    # --durations counts the guest's boot in the setup of the test that paid for it.
    setup = [line for line in result.outlines if re.match(r"[\d.]+s setup +\S+::test_guest$", line)]
    assert len(setup) == 1 and float(setup[0].split("s ")[0]) >= 0.3, result.outlines
    assert (pytester.path / "host-summary").exists()
    guest_runs_plugin_summaries = pytest.version_tuple >= (9, 2)
    assert (pytester.path / "guest-summary").exists() == guest_runs_plugin_summaries


def test_unknown_marker_keyword_is_a_config_error_naming_the_test(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.fakemachine(memroy="1G")
        def test_typo():
            pass

        @pytest.mark.fakemachine(memory="many")
        def test_bad_memory():
            pass
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines([
        "*ConfigError: @pytest.mark.fakemachine on test_*.py::test_typo: unknown keyword 'memroy'*",
        "*ConfigError: memory='many' from @pytest.mark.fakemachine on test_*.py::test_bad_memory*",
    ])  # fmt: skip


def test_guest_powering_off_or_hanging_fails_that_test_and_the_run_goes_on(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import os, time, pytest

        pytestmark = pytest.mark.fakemachine(scope="module", timeout=20)

        def test_power_off():
            os.system("echo o > /proc/sysrq-trigger")
            time.sleep(30)

        def test_after_power_off():
            pass

        def test_hang():
            time.sleep(600)

        def test_after_hang():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-rA")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines([
        "*the guest powered off during the test*",
        "*fakemachine console*",
        "*the guest timed out after 20 s and was killed*",
        "PASSED test_*::test_after_power_off",
        "PASSED test_*::test_after_hang",
    ])  # fmt: skip


def test_module_scope_shares_one_guest_and_streams_each_result(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import pytest

        pytestmark = pytest.mark.fakemachine(scope="module")

        def boot_id():
            with open("/proc/sys/kernel/random/boot_id") as f:
                return f.read()

        seen = []

        @pytest.mark.parametrize("n", range(5))
        def test_same_guest(n):
            seen.append(boot_id())
            assert len(set(seen)) == 1 and len(seen) == n + 1
        """
    )
    result = pytester.runpytest_subprocess("-v")
    result.assert_outcomes(passed=5)


def test_exitfirst_stops_and_leaves_no_guest(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        pytestmark = pytest.mark.fakemachine(scope="module")

        def test_one():
            assert False

        def test_two():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-x")
    result.assert_outcomes(failed=1)


def test_backend_unavailable_skips_under_auto_and_errors_under_uml(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.fakemachine
        def test_marked():
            pass

        def test_fixture(fakemachine):
            pass
        """
    )
    missing = str(pytester.path / "no-such-linux.uml")
    auto = pytester.runpytest_subprocess(f"--fakemachine-kernel={missing}", "-rs")
    auto.assert_outcomes(skipped=2)
    auto.stdout.fnmatch_lines(["*no-such-linux.uml*is not an executable file*"])
    uml = pytester.runpytest_subprocess(
        f"--fakemachine-kernel={missing}", "--fakemachine-backend=uml"
    )
    uml.assert_outcomes(errors=2)
    uml.stdout.fnmatch_lines(["*BackendUnavailable*no-such-linux.uml*"])
    assert "def fakemachine" not in uml.stdout.str()  # the message, not the plugin's source


def test_host_fixtures_are_torn_down_around_marked_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_a="""
        import pytest

        @pytest.fixture(scope="module")
        def module_resource():
            yield
            print("module_resource torn down")

        def test_on_host(module_resource):
            pass

        @pytest.mark.fakemachine
        def test_in_guest():
            pass
        """,
        test_b="""
        def test_next_module_on_host():
            pass
        """,
    )
    result = pytester.runpytest_subprocess("-s")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*module_resource torn down*"])


def test_xdist_workers_run_each_shared_guest_test_once(pytester: pytest.Pytester) -> None:
    # A file per run, not lines appended to one: two guests appending to one
    # hostfs file can lose lines (each guest computes its own end of file).
    runs = pytester.mkdir("runs")
    pytester.makepyfile(
        f"""
        import pytest, uuid

        pytestmark = pytest.mark.fakemachine(scope="module")

        @pytest.mark.parametrize("n", range(6))
        def test_counted(n):
            open({str(runs)!r} + f"/{{n}}-{{uuid.uuid4().hex}}", "x").close()
        """
    )
    result = pytester.runpytest_subprocess("-n", "2")
    result.assert_outcomes(passed=6)
    assert sorted(name.split("-")[0] for name in os.listdir(runs)) == [str(n) for n in range(6)]


BAD_MARKERS = {
    "memory": ('memory="lots"', "memory='lots' from @pytest.mark.fakemachine on *::test_memory"),
    "scratch": ('scratch="-4G"', "scratch='-4G' from @pytest.mark.fakemachine on *::test_scratch"),
    "timeout": ("timeout=-1", "timeout=-1 from @pytest.mark.fakemachine on *::test_timeout"),
    "label": (
        'images={"bad label": "1M"}',
        "label='bad label' from add_image() of @pytest.mark.fakemachine on *::test_label*",
    ),
    "long_label": (
        'images={"x" * 20: "1M"}',
        "label='xxxxxxxxxxxxxxxxxxxx' from * on *::test_long_label: 20 characters*",
    ),
    "volume": (
        'volumes=["/no/such/dir"]',
        "volume '/no/such/dir' from add_volume() of @pytest.mark.fakemachine on *::test_volume*",
    ),
    "guest_path": (
        'volumes=[("/tmp", "relative/path")]',
        "guest path 'relative/path' from * on *::test_guest_path: must be absolute",
    ),
    "scope": ('scope="class"', "scope='class' from @pytest.mark.fakemachine on *::test_scope*"),
    "env": ('env={"1BAD": "x"}', "env name '1BAD' from *test_env*: not a valid variable name"),
    "positional": ('"1G"', "*@pytest.mark.fakemachine on *::test_positional: takes keywords only*"),
}


def test_bad_marker_values_are_config_errors_naming_value_and_test(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        "import pytest\n"
        + "".join(
            f"\n@pytest.mark.fakemachine({args})\ndef test_{name}():\n    pass\n"
            for name, (args, _) in BAD_MARKERS.items()
        )
    )
    result = pytester.runpytest_subprocess("-rE")
    result.assert_outcomes(errors=len(BAD_MARKERS))
    for _, expected in BAD_MARKERS.values():
        result.stdout.fnmatch_lines([f"*ConfigError: {expected}*"])
    assert "Run /init" not in result.stdout.str()  # refused before any guest booted


def test_marker_keywords_images_volumes_scratch_network(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    mine = tmp_path / "mine.img"
    mine.write_bytes(b"user data" + bytes(1 << 20))
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in.txt").write_text("from the host\n")
    received: list[bytes] = []

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            received.append(self.rfile.readline().strip())
            self.wfile.write(b"ack\n")

    with socketserver.TCPServer(("127.0.0.1", 0), Handler) as server:
        port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        pytester.makepyfile(
            f"""
            import os, socket, subprocess, time, pytest
            from pytest_fakemachine import Image

            LABELS = "/dev/disk/by-fakemachine-label"

            @pytest.mark.fakemachine(
                images={{"fresh": "32M", "mine": Image({str(mine)!r})}},
                volumes=[{str(shared)!r}, ({str(shared)!r}, "/elsewhere")],
                scratch="128M", network=True, env={{"PORT": "{port}"}},
            )
            def test_everything():
                size = subprocess.run(["blockdev", "--getsize64", LABELS + "/fresh"],
                                      capture_output=True, text=True, check=True).stdout
                assert int(size) == 32 << 20
                with open(LABELS + "/mine", "rb") as f:
                    assert f.read(9) == b"user data"
                assert open({str(shared / "in.txt")!r}).read() == "from the host\\n"
                with open("/elsewhere/out.txt", "w") as f:
                    f.write("from the guest\\n")
                fstype = subprocess.run(["stat", "-f", "-c", "%T", "/scratch"],
                                        capture_output=True, text=True).stdout.strip()
                assert fstype == "ext2/ext3"
                for attempt in range(20):
                    try:
                        with socket.create_connection(("10.0.2.2", int(os.environ["PORT"])),
                                                      timeout=5) as s:
                            s.sendall(b"hello from the guest\\n")
                            assert s.makefile().readline() == "ack\\n"
                            break
                    except OSError:
                        time.sleep(0.5)
                else:
                    pytest.fail("no connection to the host's server")
            """
        )
        result = pytester.runpytest_subprocess()
        server.shutdown()
    result.assert_outcomes(passed=1)
    assert received == [b"hello from the guest"]
    assert (shared / "out.txt").read_text() == "from the guest\n"
    assert mine.stat().st_size == 9 + (1 << 20)  # the user's image, never truncated
