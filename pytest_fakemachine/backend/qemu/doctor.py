"""The doctor's checks of a host for QEMU guests: the binary, a kernel, and,
for ``kvm``, whether KVM really runs a guest (the line starts with ``kvm:``)."""

from __future__ import annotations

from ..._errors import FakeMachineError
from ..base import Check
from .host import arch, find_kernel, find_qemu
from .kvm import kvm_problem

__all__ = ["checks"]


def checks(name: str, accel: str, kernel: str | None) -> list[Check]:
    """What a QEMU guest (``name``: kvm or qemu) needs of this host, one check a line."""
    found: list[Check] = []
    try:
        host = arch()
        qemu = find_qemu(host)
        found.append(Check(f"QEMU ({qemu})", None))
        image = find_kernel(kernel, f"backend={name}")
        found.append(Check(f"kernel for QEMU guests ({image.image}, Linux {image.version})", None))
    except FakeMachineError as e:
        found.append(Check(f"QEMU ({name})", str(e), "scripts/setup.sh installs it"))
        return found
    problem = kvm_problem(qemu, host, image.image)
    found.append(Check("kvm: KVM runs guests here" if problem is None else "kvm", problem,
                       "use backend=qemu (or uml), or a host whose CPU offers KVM",
                       required=accel == "kvm"))  # fmt: skip
    return found
