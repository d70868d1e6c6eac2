"""A firewall rule that blocks a connection, checked against a real server.

Debian's UML kernels have no nf_tables for ip/ip6/inet, so in the guest
`iptables` and `ip6tables` are the legacy backend (the guest's own
/etc/alternatives; the host's are untouched). The server is the test's own,
on the guest's loopback: nothing leaves the guest.

Needs the host's iptables (an optional package of scripts/setup.sh).
"""

from __future__ import annotations

import shutil
import socket
import socketserver
import subprocess
import threading
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.fakemachine(scope="module")


class Hello(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(b"hello\n")


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    if shutil.which("iptables", path="/usr/sbin:/usr/bin") is None:
        pytest.skip("iptables is missing: install the iptables package")
    with socketserver.TCPServer(("127.0.0.1", 0), Hello) as srv:
        thread = threading.Thread(target=srv.serve_forever, daemon=True)
        thread.start()
        yield srv.server_address[1]
        srv.shutdown()


def iptables(*args: str) -> None:
    subprocess.run(["iptables", *args], check=True, capture_output=True)


def fetch(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
        return conn.recv(16)


def test_iptables_is_the_legacy_backend() -> None:
    version = subprocess.run(["iptables", "--version"], capture_output=True, text=True, check=True)
    assert "(legacy)" in version.stdout


def test_reject_rule_blocks_the_connection_until_removed(server: int) -> None:
    assert fetch(server) == b"hello\n"
    rule = ["OUTPUT", "-o", "lo", "-p", "tcp", "--dport", str(server), "-j", "REJECT",
            "--reject-with", "tcp-reset"]  # fmt: skip
    iptables("-A", *rule)
    try:
        with pytest.raises(ConnectionRefusedError):
            fetch(server)
        counters = subprocess.run(
            ["iptables", "-L", "OUTPUT", "-v", "-n", "-x"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert f"dpt:{server}" in counters
    finally:
        iptables("-D", *rule)
    assert fetch(server) == b"hello\n"


def test_drop_rule_makes_the_connection_time_out(server: int) -> None:
    rule = ["INPUT", "-i", "lo", "-p", "tcp", "--dport", str(server), "-j", "DROP"]
    iptables("-A", *rule)
    try:
        with pytest.raises(TimeoutError):
            fetch(server)
    finally:
        iptables("-D", *rule)
