"""Network namespaces joined by a veth pair, with a ping across.

Creating namespaces and virtual links needs CAP_NET_ADMIN; in the guest the
test is root over a network stack of its own. No ``network=True`` here:
every address lives inside the guest, so nothing ever leaves it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_fakemachine import in_fakemachine

# Both tests share one guest; each cleans up the namespaces it made.
pytestmark = pytest.mark.fakemachine(scope="module")

# TEST-NET-1 (RFC 5737): documentation addresses, never routed anywhere.
LEFT, RIGHT = "192.0.2.1", "192.0.2.2"


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout


def ip_json(*args: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = json.loads(ip("-json", *args))
    return result


def ping_argv() -> list[str]:
    # iputils-ping is not always installed; busybox (the guest's init) has ping.
    return ["ping"] if shutil.which("ping") else ["busybox", "ping"]


def ping(namespace: str, address: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", namespace, *ping_argv(), "-c", "1", "-W", "2", address],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    names = ("fm-left", "fm-right")
    for name in names:
        ip("netns", "add", name)
    yield names
    for name in names:  # deleting a namespace deletes its end of the veth pair too
        ip("netns", "delete", name)


def test_veth_pair_connects_two_namespaces(namespaces: tuple[str, str]) -> None:
    assert in_fakemachine()  # the marker moved the whole test into the guest
    left, right = namespaces
    # veth is a module of the UML kernel; `ip link add` would autoload it, but
    # loading it first makes a missing module the clear error.
    subprocess.run(["modprobe", "veth"], check=True)
    ip("link", "add", "veth-l", "netns", left, "type", "veth", "peer", "name", "veth-r",
       "netns", right)  # fmt: skip
    for ns, dev, address in ((left, "veth-l", LEFT), (right, "veth-r", RIGHT)):
        ip("-n", ns, "addr", "add", f"{address}/24", "dev", dev)
        ip("-n", ns, "link", "set", dev, "up")

    # Each namespace sees only its loopback and its own end of the pair.
    links = {link["ifname"]: link for link in ip_json("-n", left, "link", "show")}
    assert set(links) == {"lo", "veth-l"}
    assert links["veth-l"]["link_type"] == "ether"
    addresses = ip_json("-n", right, "addr", "show", "dev", "veth-r")[0]["addr_info"]
    assert [(a["local"], a["prefixlen"]) for a in addresses if a["family"] == "inet"] == [
        (RIGHT, 24)
    ]
    # The pair lives in the namespaces, not in the guest's own network stack.
    assert "veth-l" not in {link["ifname"] for link in ip_json("link", "show")}

    there, back = ping(left, RIGHT), ping(right, LEFT)
    assert there.returncode == 0, there.stdout + there.stderr
    assert back.returncode == 0, back.stdout + back.stderr
    assert "1 packets received" in there.stdout or "1 received" in there.stdout

    # Take one end down: the other side is unreachable again.
    ip("-n", right, "link", "set", "veth-r", "down")
    assert ping(left, RIGHT).returncode != 0


def test_new_namespace_has_only_a_down_loopback(namespaces: tuple[str, str]) -> None:
    left, _ = namespaces
    (lo,) = ip_json("-n", left, "link", "show")
    assert lo["ifname"] == "lo"
    assert "UP" not in lo["flags"]
    # No route at all: the guest's own addresses are out of reach from here.
    assert ip_json("-n", left, "route", "show") == []
    assert ping(left, "127.0.0.1").returncode != 0
    ip("-n", left, "link", "set", "lo", "up")
    assert ping(left, "127.0.0.1").returncode == 0
