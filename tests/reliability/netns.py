"""A network partition between this host and one process, made of a network namespace and a DROP rule.

:class:`Partition` creates a namespace with one veth pair to the root
namespace, on a private /30 link of the benchmarking range 198.18.0.0/15
(RFC 2544, never routed) that it assigns itself: the root end is
``host_addr`` (bind the database server there), the namespace end is
``ns_addr``. :meth:`Partition.run_argv` prefixes a command so that it runs
inside the namespace. :meth:`Partition.cut` inserts iptables DROP rules for
the veth inside the namespace, both directions, so the process's TCP
connections stay open but every packet vanishes, as in a real partition
(no RST, no ICMP); :meth:`Partition.heal` removes them, optionally keeping
the connections that were open at the cut dead for good. Nothing is changed
outside the namespace except the root end of the veth pair, which
:meth:`Partition.close` deletes with the namespace.

:func:`unavailable_reason` says why no partition can be made here (not root,
no CAP_NET_ADMIN, tools missing and not installable), or None.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["Partition", "unavailable_reason"]

_PREFIX = "mjq-part-"

INSTALLER = Path(__file__).resolve().parents[2] / ".ci" / "netns-tools.sh"


def _tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/sbin"):
        if os.access(f"{folder}/{name}", os.X_OK):
            return f"{folder}/{name}"
    return None


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)


def unavailable_reason() -> str | None:
    """Why a network partition cannot be made on this machine, or None if it can."""
    if os.name != "posix" or not Path("/proc/self/ns/net").exists():
        return "no Linux network namespaces on this platform"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN); run the suite as root to include this test"
    if (_tool("ip") is None or _tool("iptables") is None) and INSTALLER.exists():
        _run("bash", str(INSTALLER))  # apt-get install iproute2 iptables, when root and missing
    for name, package in (("ip", "iproute2"), ("iptables", "iptables")):
        if _tool(name) is None:
            return f"'{name}' is missing ({package}) and {INSTALLER.name} could not install it"
    probe = f"mjq-probe-{os.getpid()}"
    made = _run(_tool("ip") or "ip", "netns", "add", probe)
    if made.returncode != 0:
        return f"cannot create a network namespace (no CAP_NET_ADMIN?): {made.stderr.strip()}"
    try:
        rule = _run(_tool("ip") or "ip", "netns", "exec", probe, _tool("iptables") or "iptables", "-S")
        if rule.returncode != 0:
            return f"iptables does not work in a network namespace here: {rule.stderr.strip()}"
    finally:
        _run(_tool("ip") or "ip", "netns", "del", probe)
    return None


def _remove_orphans() -> None:
    """Delete the namespaces (and so their veth pairs) of test runs that were killed before cleaning up."""
    listed = _run(_tool("ip") or "ip", "netns", "list").stdout.split()
    for name in listed:
        if not name.startswith(_PREFIX) or not name[len(_PREFIX) :].isdigit():
            continue
        pid = int(name[len(_PREFIX) :])
        if not Path(f"/proc/{pid}").exists():
            tag = pid % 100_000
            _run(_tool("ip") or "ip", "link", "del", f"mjq{tag}h")
            _run(_tool("ip") or "ip", "netns", "del", name)


class Partition:
    """One namespace joined to the root namespace by a veth pair; :meth:`cut` and :meth:`heal` the link."""

    def __init__(self) -> None:
        self.ip = _tool("ip") or "ip"
        self.iptables = _tool("iptables") or "iptables"
        tag = os.getpid() % 100_000  # interface names have 15 characters at most
        self.ns = f"{_PREFIX}{os.getpid()}"
        self.host_if, self.ns_if = f"mjq{tag}h", f"mjq{tag}n"
        link = self._free_link()
        self.host_addr, self.ns_addr = str(link[1]), str(link[2])
        self._prefix = link.prefixlen
        self.is_cut = False
        self._cut_flows: set[int] = set()
        self._created = False

    @staticmethod
    def _free_link() -> ipaddress.IPv4Network:
        """A /30 of 198.18.0.0/15 that no address or route of this host overlaps."""
        shown = _run("ip", "-4", "-o", "addr", "show").stdout + _run("ip", "-4", "route", "show").stdout
        used = []
        for word in shown.split():
            try:
                used.append(ipaddress.ip_network(word, strict=False))
            except ValueError:
                continue
        start = os.getpid() % 16_000
        subnets = list(ipaddress.ip_network("198.18.0.0/17").subnets(new_prefix=30))
        for i in range(len(subnets)):
            link = subnets[(start + i) % len(subnets)]
            if not any(link.overlaps(u) for u in used if u.prefixlen > 0):
                return link
        raise RuntimeError("no free /30 in 198.18.0.0/17 for the partition link")

    def _sh(self, *argv: str) -> None:
        done = _run(*argv)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")

    def open(self) -> Partition:
        _remove_orphans()
        self._created = True
        self._sh(self.ip, "netns", "add", self.ns)
        self._sh(self.ip, "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        self._sh(self.ip, "link", "set", self.ns_if, "netns", self.ns)
        self._sh(self.ip, "addr", "add", f"{self.host_addr}/{self._prefix}", "dev", self.host_if)
        self._sh(self.ip, "link", "set", self.host_if, "up")
        inside = (self.ip, "netns", "exec", self.ns, self.ip)
        self._sh(*inside, "addr", "add", f"{self.ns_addr}/{self._prefix}", "dev", self.ns_if)
        self._sh(*inside, "link", "set", self.ns_if, "up")
        self._sh(*inside, "link", "set", "lo", "up")
        return self

    def run_argv(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace (``ip netns exec`` execs it: the pid is the command's)."""
        return [self.ip, "netns", "exec", self.ns, *argv]

    def _rules(self, action: str) -> None:
        ipt = (self.ip, "netns", "exec", self.ns, self.iptables, "-w")
        self._sh(*ipt, action, "INPUT", "-i", self.ns_if, "-j", "DROP")
        self._sh(*ipt, action, "OUTPUT", "-o", self.ns_if, "-j", "DROP")

    @property
    def cut_flows(self) -> set[int]:
        """Local ports of the connections that were open at the last :meth:`cut`."""
        return set(self._cut_flows)

    def _open_flows(self) -> set[int]:
        """Local ports of the namespace's established TCP connections over the link."""
        out = _run(self.ip, "netns", "exec", self.ns, "ss", "-Htn", "state", "established").stdout
        ports = set()
        for line in out.splitlines():
            fields = line.split()
            local = next((f for f in fields if f.startswith(f"{self.ns_addr}:")), None)
            if local is not None:
                ports.add(int(local.rsplit(":", 1)[1]))
        return ports

    def cut(self) -> None:
        """Drop every packet on the link, both ways: connections hang, nothing is refused."""
        self._cut_flows = self._open_flows()
        self._rules("-I")
        self.is_cut = True

    def heal(self, *, old_flows_dead: bool = False) -> None:
        """Let packets pass again; with ``old_flows_dead``, only those of connections opened since the cut.

        ``old_flows_dead`` models what a long outage usually leaves behind: a
        stateful firewall or NAT on the path forgot the connections during the
        outage and silently drops their packets from now on, while new
        connections pass. A client with no time bound waits on such a dead
        connection until TCP gives up, many minutes later.
        """
        if not self.is_cut:
            return
        if old_flows_dead:
            ipt = (self.ip, "netns", "exec", self.ns, self.iptables, "-w")
            for port in sorted(self._cut_flows):
                self._sh(*ipt, "-I", "OUTPUT", "-o", self.ns_if, "-p", "tcp", "--sport", str(port), "-j", "DROP")
                self._sh(*ipt, "-I", "INPUT", "-i", self.ns_if, "-p", "tcp", "--dport", str(port), "-j", "DROP")
        self._rules("-D")
        self.is_cut = False

    def close(self) -> None:
        if not getattr(self, "_created", True):
            return
        _run(self.ip, "link", "del", self.host_if)  # deletes both ends
        _run(self.ip, "netns", "del", self.ns)
        self._created = False

    def __enter__(self) -> Partition:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
