# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""An in-memory IPVS table with the kernel's answers (EEXIST, ESRCH, ENOENT, the HASHED flag).

It implements the interface of node/_ipvs.py's ``IpvsKernel`` (read, apply, get_timeouts,
set_timeouts, close) and of node/_links.py's ``LinkKernel``, so module code runs unchanged against
it; a change the table refuses fails the batch exactly as the kernel adapter does (``refused``).
"""

from __future__ import annotations

import errno

from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.node._ipvs import refused
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import HOST_PREFIX
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._ipvs_plan import (
    ADD_DEST,
    ADD_SERVICE,
    DEL_DEST,
    DEL_SERVICE,
    SET_DEST,
    SET_SERVICE,
    SVC_F_HASHED,
    Service,
    change_line,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._links import Link


def _copy_service(service):
    clone = service.copy_without_dests()
    clone.dests = {key: dest.copy() for key, dest in service.dests.items()}
    return clone


class FakeIpvsKernel:
    def __init__(self, services=(), timeouts=None):
        self.table = {}
        for service in services:
            self.table[service.key] = _copy_service(service)
            self.table[service.key].flags |= SVC_F_HASHED
        self.timeouts = dict(timeouts or {"tcp": 900, "tcp_fin": 120, "udp": 300})
        self.applied = []  # every change the code sent, in order
        self.refusing = {}  # ipvsadm-like line of a change -> errno the table answers it with
        self.reads = 0
        self.closed = False

    # -- the IpvsKernel interface --
    def read(self, keys=None, expected=None, real_servers=True):
        self.reads += 1
        wanted = self.table if keys is None else {key if not isinstance(key, Service) else key.key for key in keys}
        table = {key: _copy_service(service) for key, service in self.table.items() if key in wanted}
        if not real_servers:
            for service in table.values():
                service.dests = {}
        return table

    def apply(self, changes):
        failures = []
        for change in changes:
            self.applied.append(change)
            code = self.refusing.get(change_line(change)) or self._apply_one(*change)
            if code:
                failures.append((change, code))
        if failures:
            raise refused(changes, failures)

    def _apply_one(self, op, service, dest):
        have = self.table.get(service.key)
        if op == ADD_SERVICE:
            if have is not None:
                return errno.EEXIST
            clone = service.copy_without_dests()
            clone.flags |= SVC_F_HASHED
            self.table[service.key] = clone
            return 0
        if have is None:
            return errno.ESRCH
        if op == SET_SERVICE:
            have.scheduler, have.flags = service.scheduler, service.flags | SVC_F_HASHED
            have.timeout, have.netmask = service.timeout, service.netmask
        elif op == DEL_SERVICE:
            del self.table[service.key]
        elif op == ADD_DEST:
            if dest.key in have.dests:
                return errno.EEXIST
            have.dests[dest.key] = dest.copy(active=0, inactive=0)
        elif op in (SET_DEST, DEL_DEST):
            if dest.key not in have.dests:
                return errno.ENOENT
            if op == DEL_DEST:
                del have.dests[dest.key]
            else:
                target = have.dests[dest.key]
                target.forwarding, target.weight, target.u_threshold, target.l_threshold = dest.settings()
        return 0

    def get_timeouts(self):
        return dict(self.timeouts)

    def set_timeouts(self, timeouts):
        self.applied.append(("set-config", dict(timeouts), None))
        self.timeouts.update(timeouts)

    def close(self):
        self.closed = True

    # -- test helpers --
    def set_connections(self, key, dest_key, active, inactive=0):
        dest = self.table[key].dests[dest_key]
        dest.active, dest.inactive = active, inactive


class FakeLinkKernel:
    """Links and addresses in memory; re-adding an address fails like the kernel (EEXIST)."""

    def __init__(self, links=None):
        self.links = {}
        self.addrs = {}
        for name, (kind, addresses) in (links or {}).items():
            self.links[name] = Link(name, len(self.links) + 2, kind, 0x82)
            self.addrs[name] = dict(addresses)
        self.calls = []

    def get_link(self, name):
        link = self.links.get(name)
        return None if link is None else Link(link.name, link.index, link.kind, link.flags)

    def add_dummy(self, name):
        self.calls.append(("add_dummy", name))
        if name in self.links:
            raise KubeIpvsError("EEXIST")
        self.links[name] = Link(name, len(self.links) + 2, "dummy", 0x82)
        self.addrs[name] = {}

    def delete_link(self, link):
        self.calls.append(("delete_link", link.name))
        del self.links[link.name]
        del self.addrs[link.name]

    def addresses(self, link):
        return dict(self.addrs[link.name])

    def addresses_and_others(self, link):
        own = dict(self.addrs[link.name]) if link is not None else {}
        others = {text for name, addresses in self.addrs.items() if link is None or name != link.name
                  for text in addresses}
        return own, sorted(others)

    def change_addresses(self, link, to_add, to_remove):
        self.calls.append(("change_addresses", len(to_add), len(to_remove)))
        current = self.addrs[link.name]
        for _family, text, _prefix in to_remove:
            del current[text]
        for family, text in to_add:
            if text in current:
                raise KubeIpvsError(f"EEXIST: {text} re-added")
            current[text] = (family, HOST_PREFIX[family])

    def close(self):
        pass
