# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""IPVS input: one user entry (module options, or one item of a services list) to a validated
Service, or KubeIpvsError naming the entry and the field to fix - before anything is read or sent.

Pure: the planner (_ipvs_plan) takes what this returns. At 10k services x 10 real servers this
runs 100k times, so the common shapes (an int port and weight, a canonical IPv4 address, an
address already seen) take fast paths; everything else is validated in full.
"""

from __future__ import annotations

import socket
import struct

from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import (
    ADDRESS_FAMILY,
    HOST_PREFIX,
    INET,
    IPV4,
    IPV6,
    OF_INET,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._ipvs_plan import (
    FORWARDING_NAMES,
    FORWARDING_NUMBERS,
    FWD_MASQ,
    NETMASK_HOST,
    PROTOCOL_NAMES,
    PROTOCOL_NUMBERS,
    SCHEDULER_FLAGS,
    SVC_F_ONEPACKET,
    SVC_F_PERSISTENT,
    Dest,
    Service,
    netmask_text,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._text import DECIMAL

SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh", "fo", "ovf", "twos")


inet_pton = socket.inet_pton


def _fail(where, text):
    raise KubeIpvsError(f"{where}: {text}")


def _word(where, name, value, default, choices, shown):
    """A text option that must be one of ``choices`` (a list or a number is never one); ``shown``
    says which in the error."""
    if value is None or value == "":
        return default
    if not isinstance(value, str) or value not in choices:
        _fail(where, f"{name} must be {shown}, not {value!r}"[:300])
    return value


def _unknown(keys, allowed):
    """Sorted text of unknown keys - keys of any type (YAML allows numbers and more)."""
    return ", ".join(sorted(str(key) for key in keys if key not in allowed))


def canonical_address(where, value, family=None):
    """(family, canonical text) of a host address; accepts a /32 or /128 suffix."""
    if family != IPV6 and type(value) is str:  # pylint: disable=unidiomatic-typecheck
        try:  # inet_pton accepts only canonical dotted quads, so such a text is already canonical
            inet_pton(socket.AF_INET, value)
            return IPV4, value
        except (OSError, ValueError):  # ValueError: an embedded NUL
            pass
    text = str(value).strip()
    if "/" in text:
        text, _slash, prefix = text.partition("/")
        if prefix not in ("32", "128"):
            _fail(where, f"{value!r} is not a host address (only /32 or /128 may follow it)")
    for candidate in ((family,) if family else (IPV4, IPV6)):
        try:
            packed = socket.inet_pton(ADDRESS_FAMILY[candidate], text)
        except (OSError, ValueError):
            continue
        if prefix_ok(candidate, value):
            return candidate, socket.inet_ntop(ADDRESS_FAMILY[candidate], packed)
    expected = {IPV4: "an IPv4", IPV6: "an IPv6"}.get(family, "an IPv4 or IPv6")
    _fail(where, f"{value!r} is not {expected} address")


def prefix_ok(family, value):
    text = str(value)
    if "/" not in text:
        return True
    return text.rsplit("/", 1)[1] == str(HOST_PREFIX[family])


def _int(where, entry, name, default, low, high):
    value = entry.get(name)
    if value is None:
        return default
    if type(value) is int and low <= value <= high:  # pylint: disable=unidiomatic-typecheck
        return value  # the common case, and a bool (an int too) still goes the long way to be refused
    if isinstance(value, bool):
        _fail(where, f"{name} must be an integer, not {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an infinity (JSON's 1e400, Infinity)
        _fail(where, f"{name} must be an integer, not {value!r}"[:300])
    if str(number) != str(value).strip() and not isinstance(value, int):
        _fail(where, f"{name} must be an integer, not {value!r}")
    if not low <= number <= high:
        _fail(where, f"{name} must be between {low} and {high}, not {number}")
    return number


SERVICE_KEYS = frozenset(("protocol", "address", "port", "fwmark", "family", "scheduler", "scheduler_flags",
                          "one_packet", "persistence_timeout", "netmask", "real_servers", "purge_real_servers",
                          "state"))


DEST_KEYS = frozenset(("address", "port", "weight", "forwarding", "upper_threshold", "lower_threshold"))


def normalize_service(entry, where="service", purge_default=True, addresses=None):
    """A validated Service from one user entry (module options or one item of a services file).

    Raises KubeIpvsError naming the entry and the field to fix. The returned Service has
    ``state`` information in the second item: (service, state).
    """
    if not isinstance(entry, dict):
        _fail(where, f"must be a mapping, not {entry!r}")
    if not SERVICE_KEYS.issuperset(entry):
        unknown = _unknown((name for name, value in entry.items() if value is not None), SERVICE_KEYS)
        if unknown:
            _fail(where, f"unknown keys {unknown} (allowed: {', '.join(sorted(SERVICE_KEYS))})"[:600])
    family_name = entry.get("family")
    if family_name is not None and (not isinstance(family_name, str) or family_name not in OF_INET):
        _fail(where, f"family must be inet or inet6, not {family_name!r}"[:300])
    family = OF_INET.get(family_name)
    fwmark = _int(where, entry, "fwmark", 0, 1, 0xFFFFFFFF)
    if fwmark:
        for name in ("protocol", "address", "port"):
            if entry.get(name) is not None:
                _fail(where, f"a fwmark service has no {name}: give either fwmark or protocol/address/port")
        service = Service(family or IPV4, fwmark=fwmark)
    else:
        for name in ("address", "port"):
            if entry.get(name) is None:
                _fail(where, f"{name} is required (or give fwmark)")
        protocol = _word(where, "protocol", entry.get("protocol"), "tcp", PROTOCOL_NUMBERS, "one of tcp, udp, sctp")
        family, address = canonical_address(where + ".address", entry["address"], family)
        port = _int(where, entry, "port", 0, 1, 65535)
        service = Service(family, PROTOCOL_NUMBERS[protocol], address, port)
    scheduler = entry.get("scheduler") or "rr"
    if not isinstance(scheduler, str) or scheduler not in SCHEDULERS:
        _fail(where, f"unknown scheduler {scheduler!r} (known: {', '.join(SCHEDULERS)})"[:300])
    service.scheduler = scheduler
    flags = 0
    scheduler_flags = entry.get("scheduler_flags") or ()
    if not isinstance(scheduler_flags, (list, tuple)):
        _fail(where, f"scheduler_flags must be a list, not {scheduler_flags!r}"[:300])
    for flag in scheduler_flags:
        if not isinstance(flag, str) or flag not in SCHEDULER_FLAGS:
            _fail(where, f"unknown scheduler flag {flag!r} (known: {', '.join(sorted(SCHEDULER_FLAGS))})")
        if flag.split("-")[0] != scheduler:
            owner = flag.split("-")[0]
            _fail(where, f"scheduler flag {flag} only applies to the {owner} scheduler, not {scheduler}")
        flags |= SCHEDULER_FLAGS[flag]
    one_packet = entry.get("one_packet")
    if one_packet not in (None, True, False):
        _fail(where, f"one_packet must be true or false, not {one_packet!r}")
    if one_packet:
        flags |= SVC_F_ONEPACKET
    timeout = _int(where, entry, "persistence_timeout", 0, 0, 2147483)
    if timeout:
        flags |= SVC_F_PERSISTENT
    service.flags = flags
    service.timeout = timeout
    service.netmask = _netmask(where, service.family, entry.get("netmask"))
    purge = entry.get("purge_real_servers")
    service.purge = purge_default if purge is None else bool(purge)
    state = _word(where, "state", entry.get("state"), "present", ("present", "absent"), "present or absent")
    addresses = ({IPV4: {}, IPV6: {}} if addresses is None else addresses)[service.family]
    servers = entry.get("real_servers") or []
    if not isinstance(servers, list):
        _fail(where, "real_servers must be a list")
    dests = service.dests
    default_port = 0 if fwmark else service.port
    min_port = 0 if fwmark else 1
    ipv4 = service.family == IPV4
    for index, server in enumerate(servers):
        dest = _plain_dest(server, addresses, default_port, min_port, ipv4)
        if dest is None:
            dest = _normalize_dest(where, index, server, service, addresses)
        key = (dest.address, dest.port)
        if key in dests:
            _fail(where, f"real server {dest.label(service.family)} is listed twice")
        dests[key] = dest
    return service, state


def _netmask(where, family, value):
    if value is None or value == "":
        return NETMASK_HOST[family]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        _fail(where, f"netmask must be a dotted IPv4 mask or a prefix length, not {value!r}"[:300])
    text = str(value).strip().lstrip("/")
    if family == IPV6:
        if not DECIMAL.fullmatch(text) or not 1 <= int(text) <= 128:
            _fail(where, f"netmask of an IPv6 service is a prefix length 1-128, not {value!r}"[:300])
        return int(text)
    if DECIMAL.fullmatch(text) and int(text) <= 32:
        return (0xFFFFFFFF << (32 - int(text))) & 0xFFFFFFFF
    try:
        mask = struct.unpack("!I", socket.inet_pton(socket.AF_INET, text))[0]
    except (OSError, ValueError):  # ValueError: an embedded NUL
        _fail(where, f"netmask must be a dotted IPv4 mask or a prefix length, not {value!r}")
    inverted = ~mask & 0xFFFFFFFF
    if inverted & (inverted + 1):
        _fail(where, f"netmask {value!r} is not contiguous")
    return mask


def _small_int(value, low, high):
    """``value`` when it is already a plain int in range (the fast path at 100k real servers)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high else None


PLAIN_DEST_KEYS = frozenset(("address", "port", "weight"))


def _plain_dest(server, addresses, default_port, min_port, ipv4):
    """The Dest of the common real-server shape - a mapping of an address already seen in this
    family (``addresses``) or a canonical IPv4 one, an int port and weight in range, nothing
    else - or None, and then ``_normalize_dest`` validates it in full. At 100k real servers this
    is most of the validation cost of a run, so it does only what that shape needs."""
    # Exact types on purpose: a bool is an int too, and must go to the full validation to be
    # refused; so must an address that is not a text (a list is not even a key of ``addresses``).
    if type(server) is not dict or not PLAIN_DEST_KEYS.issuperset(server):  # pylint: disable=unidiomatic-typecheck
        return None
    raw = server.get("address")
    if type(raw) is not str:  # pylint: disable=unidiomatic-typecheck
        return None
    address = addresses.get(raw)
    if address is None:
        if not ipv4:
            return None
        try:  # inet_pton accepts only canonical dotted quads, so the text is already canonical
            inet_pton(socket.AF_INET, raw)
        except (OSError, ValueError):  # ValueError: an embedded NUL
            return None
        address = addresses[raw] = raw
    port = server.get("port", default_port)
    weight = server.get("weight", 1)
    if (type(port) is not int or type(weight) is not int  # pylint: disable=unidiomatic-typecheck
            or not min_port <= port <= 65535 or not 0 <= weight <= 65535):
        return None
    return Dest(address, port, FWD_MASQ, weight)


def _normalize_dest(service_where, index, server, service, addresses):
    """A Dest from one real_servers item. ``addresses`` caches canonical addresses of the
    service's family: at 10k services x 10 real servers this runs 100k times, pod IPs recur."""
    if not isinstance(server, dict):
        if isinstance(server, str):
            server = {"address": server}
        elif not isinstance(server, dict):
            _fail(f"{service_where}.real_servers[{index}]",
                  f"must be a mapping with address (and port, weight, ...), not {server!r}")
    extra = server.keys() - DEST_KEYS
    if extra and any(server[name] is not None for name in extra):
        _fail(f"{service_where}.real_servers[{index}]",
              f"unknown key(s) {_unknown(extra, DEST_KEYS)} (allowed: {', '.join(sorted(DEST_KEYS))})"[:600])
    raw = server.get("address")
    is_text = isinstance(raw, str)
    address = addresses.get(raw) if is_text else None
    if address is None and service.family == IPV4 and is_text:
        try:  # inet_pton accepts only canonical dotted quads, so the text is already canonical
            inet_pton(socket.AF_INET, raw)
            address = raw
        except (OSError, ValueError):  # ValueError: an embedded NUL
            pass
    if address is None:
        where = f"{service_where}.real_servers[{index}]"
        if raw is None:
            _fail(where, "address is required")
        address = canonical_address(where + ".address", raw, service.family)[1]
        if is_text:
            addresses[raw] = address
    port = _small_int(server.get("port"), 0 if service.fwmark else 1, 65535)
    if port is None:
        default = 0 if service.fwmark else service.port
        port = _int(f"{service_where}.real_servers[{index}]", server, "port", default,
                    0 if service.fwmark else 1, 65535)
    forwarding = FORWARDING_NUMBERS[_word(f"{service_where}.real_servers[{index}]", "forwarding",
                                          server.get("forwarding"), "nat", FORWARDING_NUMBERS, "nat, route, tunnel or local")]
    weight = _small_int(server.get("weight", 1), 0, 65535)
    if weight is None:
        weight = _int(f"{service_where}.real_servers[{index}]", server, "weight", 1, 0, 65535)
    upper = lower = 0
    if server.get("upper_threshold") or server.get("lower_threshold"):
        where = f"{service_where}.real_servers[{index}]"
        upper = _int(where, server, "upper_threshold", 0, 0, 2147483647)
        lower = _int(where, server, "lower_threshold", 0, 0, 2147483647)
        if lower > upper:
            _fail(where, f"lower_threshold ({lower}) must not exceed upper_threshold ({upper})")
    return Dest(address, port, forwarding, weight, upper, lower)


def normalize_services(entries, where="services", purge_default=True):
    """(services to have, services to delete) from a list of entries; duplicates are an error."""
    if not isinstance(entries, list):
        _fail(where, "must be a list of services")
    desired, absent, seen, addresses = [], [], {}, {IPV4: {}, IPV6: {}}
    for index, entry in enumerate(entries):
        label = f"{where}[{index}]"
        service, state = normalize_service(entry, label, purge_default, addresses)
        if service.key in seen:
            _fail(label, f"duplicate of {seen[service.key]} ({service.label()})")
        seen[service.key] = label
        (desired if state == "present" else absent).append(service)
    return desired, absent


def service_entry(service):
    """The ipvs_sync / ipvs_service input that programs ``service`` as the kernel holds it - the
    inverse of ``normalize_service`` (what a snapshot of a foreign service is written as, so it can
    be put back exactly)."""
    entry = {"family": INET[service.family], "scheduler": service.scheduler}
    if service.fwmark:
        entry["fwmark"] = service.fwmark
    else:
        entry.update(protocol=PROTOCOL_NAMES[service.protocol], address=service.address, port=service.port)
    flags = [name for name, bit in sorted(SCHEDULER_FLAGS.items())
             if name.startswith(service.scheduler + "-") and service.flags & bit]
    if flags:
        entry["scheduler_flags"] = flags
    if service.flags & SVC_F_ONEPACKET:
        entry["one_packet"] = True
    if service.persistent:
        entry["persistence_timeout"] = service.timeout
        if service.netmask != NETMASK_HOST[service.family]:
            entry["netmask"] = netmask_text(service.family, service.netmask)
    servers = []
    for _key, dest in sorted(service.dests.items()):
        server = {"address": dest.address, "port": dest.port, "weight": dest.weight,
                  "forwarding": FORWARDING_NAMES[dest.forwarding]}
        if dest.u_threshold or dest.l_threshold:
            server.update(upper_threshold=dest.u_threshold, lower_threshold=dest.l_threshold)
        servers.append(server)
    entry["real_servers"] = servers
    return entry
