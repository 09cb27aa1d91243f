# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The IPVS table as plain objects, and the pure planner: (desired, current, scope) -> changes.

No Ansible and no netlink here: the planner is unit-tested with in-memory tables, and the same
objects are what node/_ipvs.py reads from and writes to the kernel.
"""

from __future__ import annotations

import ipaddress
import socket

from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import (
    ADDRESS_FAMILY,
    INET,
    IPV4,
    IPV6,
    family_of,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._text import integer, ip_network

PROTO_TCP = 6
PROTO_UDP = 17
PROTO_SCTP = 132
PROTOCOL_NAMES = {PROTO_TCP: "tcp", PROTO_UDP: "udp", PROTO_SCTP: "sctp"}
PROTOCOL_NUMBERS = {name: number for number, name in PROTOCOL_NAMES.items()}
IPVSADM_PROTOCOL_FLAGS = {PROTO_TCP: "-t", PROTO_UDP: "-u", PROTO_SCTP: "--sctp-service"}

# include/uapi/linux/ip_vs.h
SVC_F_PERSISTENT = 0x0001
SVC_F_HASHED = 0x0002  # set by the kernel on every hashed service: never part of a comparison
SVC_F_ONEPACKET = 0x0004
SVC_F_SCHED1 = 0x0008
SVC_F_SCHED2 = 0x0010
SVC_F_SCHED3 = 0x0020
SVC_F_COMPARED = ~SVC_F_HASHED & 0xFFFFFFFF
SCHEDULER_FLAGS = {
    "sh-fallback": SVC_F_SCHED1,
    "sh-port": SVC_F_SCHED2,
    "mh-fallback": SVC_F_SCHED1,
    "mh-port": SVC_F_SCHED2,
}

FWD_MASQ = 0
FWD_LOCAL = 1
FWD_TUNNEL = 2
FWD_ROUTE = 3
FORWARDING_NAMES = {FWD_MASQ: "nat", FWD_LOCAL: "local", FWD_TUNNEL: "tunnel", FWD_ROUTE: "route"}
FORWARDING_NUMBERS = {"nat": FWD_MASQ, "local": FWD_LOCAL, "tunnel": FWD_TUNNEL, "route": FWD_ROUTE}
IPVSADM_FORWARDING_FLAGS = {FWD_MASQ: "-m", FWD_LOCAL: "-g", FWD_TUNNEL: "-i", FWD_ROUTE: "-g"}

NETMASK_HOST = {IPV4: 0xFFFFFFFF, IPV6: 128}

ADD_SERVICE = "add-service"
SET_SERVICE = "set-service"
DEL_SERVICE = "del-service"
ADD_DEST = "add-dest"
SET_DEST = "set-dest"
DEL_DEST = "del-dest"
CHANGE_ORDER = (DEL_DEST, DEL_SERVICE, SET_SERVICE, ADD_SERVICE, ADD_DEST, SET_DEST)

# kube-proxy drains only connection-oriented real servers; UDP/SCTP ones go at once (their
# connections are expired by net.ipv4.vs.expire_nodest_conn on the next packet).
DRAINED_PROTOCOLS = (PROTO_TCP, 0)


class Dest:
    """One real server of a virtual service. ``active``/``inactive`` are read from the kernel."""

    __slots__ = ("active", "address", "forwarding", "inactive", "l_threshold", "port", "u_threshold", "weight")

    def __init__(self, address, port, forwarding=FWD_MASQ, weight=1, u_threshold=0, l_threshold=0,
                 active=0, inactive=0):
        self.address = address
        self.port = port
        self.forwarding = forwarding
        self.weight = weight
        self.u_threshold = u_threshold
        self.l_threshold = l_threshold
        self.active = active
        self.inactive = inactive

    @property
    def key(self):
        return (self.address, self.port)

    def settings(self):
        return (self.forwarding, self.weight, self.u_threshold, self.l_threshold)

    def copy(self, **changes):
        clone = Dest(self.address, self.port, self.forwarding, self.weight, self.u_threshold, self.l_threshold,
                     self.active, self.inactive)
        for name, value in changes.items():
            setattr(clone, name, value)
        return clone

    def label(self, family):
        return host_port(family, self.address, self.port)

    def as_dict(self):
        return {"address": self.address, "port": self.port, "forwarding": FORWARDING_NAMES[self.forwarding],
                "weight": self.weight, "upper_threshold": self.u_threshold, "lower_threshold": self.l_threshold,
                "active_connections": self.active, "inactive_connections": self.inactive}


class Service:
    """One IPVS virtual service: (family, protocol, address, port) or (family, fwmark)."""

    __slots__ = ("address", "dests", "family", "flags", "fwmark", "netmask", "port", "protocol", "purge",
                 "scheduler", "timeout")

    def __init__(self, family, protocol=0, address="", port=0, fwmark=0, scheduler="rr", flags=0, timeout=0,
                 netmask=None, dests=None, purge=True):
        self.family = family
        self.protocol = protocol
        self.address = address
        self.port = port
        self.fwmark = fwmark
        self.scheduler = scheduler
        self.flags = flags
        self.timeout = timeout
        self.netmask = NETMASK_HOST[family] if netmask is None else netmask
        self.dests = {} if dests is None else dests
        self.purge = purge  # desired side only: remove real servers that are not listed

    @property
    def key(self):
        return (self.family, self.protocol, self.address, self.port, self.fwmark)

    @property
    def persistent(self):
        return bool(self.flags & SVC_F_PERSISTENT)

    def settings(self):
        """What SET_SERVICE can change, normalised: the kernel's HASHED bit never counts, and
        timeout/netmask only mean something for persistent services."""
        flags = self.flags & SVC_F_COMPARED
        if flags & SVC_F_PERSISTENT:
            return (self.scheduler, flags, self.timeout, self.netmask)
        return (self.scheduler, flags, 0, NETMASK_HOST[self.family])

    def copy_without_dests(self):
        return Service(self.family, self.protocol, self.address, self.port, self.fwmark, self.scheduler, self.flags,
                       self.timeout, self.netmask, {}, self.purge)

    def label(self):
        return service_label(self.key)

    def ipvsadm_spec(self):
        """The ipvsadm words that name this service (``-t 10.96.0.1:80`` / ``-f 7``)."""
        if self.fwmark:
            return f"-f {self.fwmark}" + (" -6" if self.family == IPV6 else "")
        return f"{IPVSADM_PROTOCOL_FLAGS[self.protocol]} {host_port(self.family, self.address, self.port)}"

    def ipvsadm_options(self):
        words = ["-s", self.scheduler]
        flag_names = [name for name, bit in (("flag-1", SVC_F_SCHED1), ("flag-2", SVC_F_SCHED2),
                                             ("flag-3", SVC_F_SCHED3)) if self.flags & bit]
        if flag_names:
            words += ["-b", ",".join(flag_names)]
        if self.flags & SVC_F_ONEPACKET:
            words.append("-o")
        if self.persistent:
            words += ["-p", str(self.timeout)]
            if self.netmask != NETMASK_HOST[self.family]:
                words += ["-M", netmask_text(self.family, self.netmask)]
        return " ".join(words)

    def as_dict(self, with_dests=True):
        result = {"family": INET[self.family], "scheduler": self.scheduler,
                  "flags": self.flags & SVC_F_COMPARED, "persistence_timeout": self.timeout if self.persistent else 0,
                  "netmask": netmask_text(self.family, self.netmask)}
        if self.fwmark:
            result["fwmark"] = self.fwmark
        else:
            result.update(protocol=PROTOCOL_NAMES.get(self.protocol, str(self.protocol)), address=self.address,
                          port=self.port)
        if with_dests:
            result["real_servers"] = [dest.as_dict() for _key, dest in sorted(self.dests.items())]
        return result


def host_port(family, address, port):
    return f"[{address}]:{port}" if family == IPV6 else f"{address}:{port}"


def netmask_text(family, netmask):
    if family == IPV6:
        return str(netmask)
    return str(ipaddress.IPv4Address(netmask))


def service_label(key):
    family, protocol, address, port, fwmark = key
    if fwmark:
        return f"fwmark/{INET[family]}/{fwmark}"
    return f"{PROTOCOL_NAMES.get(protocol, str(protocol))}/{host_port(family, address, port)}"


# kube-proxy's NodePorts come from the API server's --service-node-port-range (health-check node
# ports too): on a node's own addresses it owns those ports and nothing else.
DEFAULT_NODE_PORT_RANGE = "30000-32767"


def parse_port_range(text, where="scope.node_port_range"):
    """(low, high) of a port range written ``low-high`` (or one port)."""
    low, sep, high = str(text).partition("-")
    if not (low.strip().isdigit() and (not sep or high.strip().isdigit())):
        raise ValueError(f"{where}: {text!r} is not a port range such as 30000-32767")
    low, high = int(low), int(high if sep else low)
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"{where}: {text!r} must lie within 1-65535, low end first")
    return low, high


def _networks(values, where):
    if values is not None and not isinstance(values, (list, tuple)):
        raise KubeIpvsError(f"{where} must be a list of networks in CIDR notation")
    return [str(ip_network(value, where)) for value in values or []]


def scope_settings(params, where="scope"):
    """The checked settings of a ``scope`` option (cidrs, dummy_interface, fwmarks, node_port_cidrs,
    node_port_range as (low, high)); KubeIpvsError naming the bad value, before anything is read.
    The link name is checked by the caller, which knows its default."""
    try:
        port_range = parse_port_range(params.get("node_port_range") or DEFAULT_NODE_PORT_RANGE,
                                      f"{where}.node_port_range")
    except ValueError as error:
        raise KubeIpvsError(str(error)) from None
    return {"cidrs": _networks(params.get("cidrs"), f"{where}.cidrs"),
            "dummy_interface": params.get("dummy_interface"),
            "fwmarks": [integer(mark, f"{where}.fwmarks", 1, 0xFFFFFFFF) for mark in params.get("fwmarks") or []],
            "node_port_cidrs": _networks(params.get("node_port_cidrs"), f"{where}.node_port_cidrs"),
            "node_port_range": port_range}


class Scope:
    """Which services this collection owns: VIPs inside ``cidrs``, VIPs in ``addresses`` (the
    addresses on kube-ipvs0), the listed ``fwmarks``, and, on addresses inside
    ``node_port_cidrs`` (the node's own), only ports inside ``node_port_range``. Everything else
    is foreign - a keepalived service on the node's address and port 8443 included."""

    def __init__(self, cidrs=(), addresses=(), fwmarks=(), node_port_cidrs=(), node_port_range=None):
        self.networks = [ipaddress.ip_network(cidr, strict=False) for cidr in cidrs]
        # (family, network as int, mask as int): containment without an ip_address per VIP.
        self._ranges = self._int_ranges(self.networks)
        self.node_port_networks = [ipaddress.ip_network(cidr, strict=False) for cidr in node_port_cidrs]
        self._node_port_ranges = self._int_ranges(self.node_port_networks)
        self.node_port_range = (parse_port_range(node_port_range) if isinstance(node_port_range, str)
                                else node_port_range or parse_port_range(DEFAULT_NODE_PORT_RANGE))
        self.addresses = set(addresses)
        self.fwmarks = set(fwmarks)

    @staticmethod
    def _int_ranges(networks):
        return [(family_of(network), int(network.network_address), int(network.netmask)) for network in networks]

    def contains(self, service):
        if service.fwmark:
            return service.fwmark in self.fwmarks
        address = service.address
        if address in self.addresses:
            return True
        if not self._ranges and not self._node_port_ranges:
            return False
        family = service.family
        value = int.from_bytes(socket.inet_pton(ADDRESS_FAMILY[family], address), "big")
        if any(net_family == family and value & mask == network for net_family, network, mask in self._ranges):
            return True
        low, high = self.node_port_range
        return low <= service.port <= high and any(
            net_family == family and value & mask == network for net_family, network, mask in self._node_port_ranges)

    def describe(self):
        return {"cidrs": [str(network) for network in self.networks], "addresses": len(self.addresses),
                "fwmarks": sorted(self.fwmarks),
                "node_port_cidrs": [str(network) for network in self.node_port_networks],
                "node_port_range": "-".join(str(port) for port in self.node_port_range)}


class Plan:
    """The ordered change list plus what the planner learned about draining real servers."""

    def __init__(self):
        self.changes = {op: [] for op in CHANGE_ORDER}
        self.draining = []  # labels "service -> real server" that wait for their connections
        self.drain_state = {}

    def add(self, op, service, dest=None):
        self.changes[op].append((op, service, dest))

    def ordered(self):
        """Deletions first (frees addresses and ports), then edits, then additions."""
        return [change for op in CHANGE_ORDER for change in self.changes[op]]

    def counts(self):
        return {op: len(items) for op, items in self.changes.items()}

    def __len__(self):
        return sum(len(items) for items in self.changes.values())


def plan_changes(desired, current, scope=None, exclusive=False, absent=(), drain_state=None, now=0.0,
                 drain_timeout=None):
    """Changes that turn ``current`` into ``desired`` without touching what is out of ``scope``.

    desired: list of Service (validated, unique keys; ``purge`` says whether unlisted real
        servers go); current: {key: Service} as read from the kernel (with connection counts);
    scope: Scope deciding which unlisted services ``exclusive`` may delete (None: none);
    absent: keys of services to delete; drain_state: {service label: {dest label: start time}}
        from earlier runs; now/drain_timeout: seconds, drain_timeout None = wait for connections.
    """
    plan = Plan()
    old_drain = drain_state or {}
    wanted = set()
    for service in desired:
        wanted.add(service.key)
        existing = current.get(service.key)
        if existing is None:
            plan.add(ADD_SERVICE, service)
            for dest in service.dests.values():
                plan.add(ADD_DEST, service, dest)
            continue
        if existing.settings() != service.settings():
            plan.add(SET_SERVICE, service)
        _plan_dests(plan, service, existing, old_drain.get(service.label(), {}), now, drain_timeout)
    for key in absent:
        if key in current and key not in wanted:
            plan.add(DEL_SERVICE, current[key])
    if exclusive and scope is not None:
        absent_keys = set(absent)
        for key, existing in current.items():
            if key not in wanted and key not in absent_keys and scope.contains(existing):
                plan.add(DEL_SERVICE, existing)
    return plan


def _plan_dests(plan, service, existing, old_drain, now, drain_timeout):
    current_dests = existing.dests
    # The reader hands back the desired mapping itself when the kernel holds exactly those real
    # servers (node/_ipvs.py's ProcTable): nothing to add, change, drain or purge, nothing to compare.
    if current_dests is service.dests:
        return
    for key, dest in service.dests.items():
        have = current_dests.get(key)
        if have is None:
            plan.add(ADD_DEST, service, dest)
        elif (have.weight != dest.weight or have.forwarding != dest.forwarding
              or have.u_threshold != dest.u_threshold or have.l_threshold != dest.l_threshold):
            plan.add(SET_DEST, service, dest)
    if not service.purge:
        return
    drains = service.protocol in DRAINED_PROTOCOLS
    still_draining = {}
    for key, have in current_dests.items():
        if key in service.dests:
            continue
        label = have.label(service.family)
        started = old_drain.get(label, now)
        expired = drain_timeout is not None and now - started >= drain_timeout
        if not drains or have.active + have.inactive == 0 or expired:
            plan.add(DEL_DEST, service, have)
            continue
        still_draining[label] = started
        plan.draining.append(f"{service.label()} -> {label}")
        if have.weight != 0:
            plan.add(SET_DEST, service, have.copy(weight=0))
    if still_draining:
        plan.drain_state[service.label()] = still_draining


def merge_drain_state(old_state, plan, services_considered):
    """The drain state to store: entries of the services this run looked at are replaced by the
    plan's; other services' entries (another task's) are kept."""
    merged = {label: entries for label, entries in old_state.items() if label not in services_considered}
    merged.update(plan.drain_state)
    return merged


def change_line(change):
    """One change as an ipvsadm-like command line (for diffs that stay readable at 10k services)."""
    op, service, dest = change
    if op == ADD_SERVICE:
        return f"-A {service.ipvsadm_spec()} {service.ipvsadm_options()}"
    if op == SET_SERVICE:
        return f"-E {service.ipvsadm_spec()} {service.ipvsadm_options()}"
    if op == DEL_SERVICE:
        return f"-D {service.ipvsadm_spec()}"
    real = f"-r {dest.label(service.family)}"
    if op == DEL_DEST:
        return f"-d {service.ipvsadm_spec()} {real}"
    words = [real, IPVSADM_FORWARDING_FLAGS[dest.forwarding], "-w", str(dest.weight)]
    if dest.u_threshold:
        words += ["-x", str(dest.u_threshold)]
    if dest.l_threshold:
        words += ["-y", str(dest.l_threshold)]
    return f"{'-a' if op == ADD_DEST else '-e'} {service.ipvsadm_spec()} {' '.join(words)}"


def summarize(plan, limit=20):
    """Counts per kind of change plus the first ``limit`` changes as ipvsadm-like lines."""
    ordered = plan.ordered()
    counts = plan.counts()
    header = ", ".join(f"{op} {counts[op]}" for op in CHANGE_ORDER if counts[op]) or "no changes"
    lines = [f"# {header}"]
    lines += [change_line(change) for change in ordered[:limit]]
    if len(ordered) > limit:
        lines.append(f"# ... {len(ordered) - limit} more changes")
    if plan.draining:
        lines.append(f"# draining: {len(plan.draining)} real servers")
    return "\n".join(lines) + "\n"


def result_counts(plan):
    """The counts a module returns: added/updated/removed services and real servers, draining."""
    counts = plan.counts()
    return {
        "services_added": counts[ADD_SERVICE],
        "services_updated": counts[SET_SERVICE],
        "services_removed": counts[DEL_SERVICE],
        "real_servers_added": counts[ADD_DEST],
        "real_servers_updated": counts[SET_DEST],
        "real_servers_removed": counts[DEL_DEST],
        "real_servers_draining": len(plan.draining),
    }


def simulate(current, changes):
    """The table ``current`` would become after ``changes`` (for diffs and check mode).

    Services that no change touches are shared with ``current``, touched ones are copied.
    """
    table = dict(current)
    copied = set()

    def own(key):
        if key not in copied:
            original = table[key]
            clone = original.copy_without_dests()
            clone.dests = {dkey: dest.copy() for dkey, dest in original.dests.items()}
            table[key] = clone
            copied.add(key)
        return table[key]

    for op, service, dest in changes:
        key = service.key
        if op == DEL_SERVICE:
            table.pop(key, None)
        elif op == ADD_SERVICE:
            clone = service.copy_without_dests()
            table[key] = clone
            copied.add(key)
        elif op == SET_SERVICE:
            target = own(key)
            target.scheduler, target.flags, target.timeout, target.netmask = (
                service.scheduler, service.flags, service.timeout, service.netmask)
        elif op == DEL_DEST:
            own(key).dests.pop(dest.key, None)
        elif op == ADD_DEST:
            own(key).dests[dest.key] = dest.copy()
        elif op == SET_DEST:
            target = own(key).dests[dest.key]
            target.forwarding, target.weight, target.u_threshold, target.l_threshold = dest.settings()
    return table
