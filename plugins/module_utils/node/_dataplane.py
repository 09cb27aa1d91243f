# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Read a node's kube-proxy dataplane into a pure/_dataplane.NodeState, and apply a cleanup plan.

No Ansible import: the tools run through node/_commands.py and the ipset, iptables and nftables
adapters, IPVS and links through the collection's own netlink code.
Reading never loads a kernel module: IPVS is read only when ``/proc/net/ip_vs`` exists, and the
legacy iptables backend only for tables the kernel already lists.
"""

from __future__ import annotations

import json
import os
import time

from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.node._ipset import Ipsets
from ansible_collections.kubeipvs.node.plugins.module_utils.node._iptables import Iptables, legacy_tables
from ansible_collections.kubeipvs.node.plugins.module_utils.node._nftables import Nftables
from ansible_collections.kubeipvs.node.plugins.module_utils.pure import _dataplane as dp
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import FAMILIES, INET, IPV4, NFT
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_catalogue import NFT_NO_ENDPOINT_MAP, NFT_SERVICE_MAP
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._iptables import parse_save
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._ipvs_input import service_entry
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._ipvs_plan import (
    DEL_SERVICE,
    Scope,
)

# The options dataplane_facts and proxy_cleanup share: which IPVS services are kube-proxy's, and
# which address families to look at.
SCOPE_AND_FAMILY_ARGS = {
    "scope": {"type": "dict", "default": {}, "options": {
        "cidrs": {"type": "list", "elements": "str", "default": []},
        "dummy_interface": {"type": "str", "default": "kube-ipvs0"},
        "node_port_cidrs": {"type": "list", "elements": "str", "default": []},
        "node_port_range": {"type": "str", "default": "30000-32767"},
    }},
    "family": {"type": "str", "choices": ["ipv4", "ipv6", "both"], "default": "both"},
}
PROC_IP_VS = "/proc/net/ip_vs"
MODULE_PREFIXES = ("ip_vs", "nf_conntrack", "ip_set", "nf_tables", "ip_tables", "ip6_tables", "nft_",
                   "xt_ipvs", "br_netfilter", "dummy", "nf_nat")


def _read_file(path):
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


class NodeReader:
    """Reads everything both modules need, once; keeps what the apply step needs (IPVS services)."""

    def __init__(self, commands, families=FAMILIES, ipvs_factory=None, link_factory=None, proc_root="/"):
        self.commands = commands
        self.ipsets = Ipsets(commands, required=False)
        self.nftables = Nftables(commands)
        self.iptables = {family: Iptables(commands, family, proc_root) for family in FAMILIES}
        self.families = families
        self.ipvs_factory = ipvs_factory
        self.link_factory = link_factory
        self.proc_root = proc_root
        self.tools = {}  # (backend, family) -> node/_iptables.BackendTools
        self.services = {}  # label -> Service (owned)
        self.link = None
        self.link_addresses = []
        self.local_addresses = None  # every other link's addresses; None until read (or unreadable)
        self.warnings = []

    def _proc(self, path):
        return os.path.join(self.proc_root, path.lstrip("/"))

    # iptables ----------------------------------------------------------------------------------

    def _backends(self, family):
        """Backends to read: nft always; legacy only when the kernel already has a legacy table
        (reading an absent legacy table would create it)."""
        backends = ["nft"]
        loaded = legacy_tables(family, self.proc_root)
        if any(table in loaded for table in dp.TABLES):
            backends.append("legacy")
        return backends

    def read_iptables(self, family_state):
        for backend in self._backends(family_state.family):
            # The plain iptables-save stands in for the nft flavour only (older distributions ship only
            # the plain names); standing in for legacy too would read the same rules twice.
            tools = self.iptables[family_state.family].tools(backend, plain_fallback=backend == "nft")
            if not tools.save:
                continue
            out = self.commands.check([tools.save])
            self.tools[(backend, family_state.family)] = tools
            for table in dp.TABLES:
                if f"*{table}" in out:
                    family_state.tables[(backend, table)] = parse_save(out, table)

    # IPVS and the dummy link -------------------------------------------------------------------

    def read_link(self, name):
        """(exists, [addresses]) of the dummy interface, or (None, []) when links cannot be read."""
        if self.link_factory is None:
            return None, []
        try:
            links = self.link_factory()
        except OSError as error:
            self.warnings.append(f"cannot read links ({error}): {name} reported as unknown")
            return None, []
        try:
            link = links.get_link(name)
            if link is not None and link.kind != "dummy":
                # Only a dummy link of the owned name is kube-proxy's: another link of that name (a
                # bridge, a NIC) is neither removed nor does it make the services on its addresses owned.
                self.warnings.append(f"link {name} is of type {link.kind or 'unknown'!r}, not dummy: it is not "
                                     "kube-proxy's and is left alone")
                link = None
            self.link = link
            own, self.local_addresses = links.addresses_and_others(self.link)  # one dump for both
            addresses = sorted(own)
            self.link_addresses = addresses
        finally:
            links.close()
        return self.link is not None, addresses

    def read_ipvs(self, owner=None):
        """{key: Service} of the whole IPVS table; {} when ip_vs is not loaded; None when unreadable.
        Ownership and deletion need the services alone; the services ``owner`` (a Scope) does not
        contain come back with their real servers, read exactly (thresholds too), so they can be
        reported whole."""
        if not os.path.exists(self._proc(PROC_IP_VS)) or self.ipvs_factory is None:
            return {}
        try:
            kernel = self.ipvs_factory()
        except (OSError, KubeIpvsError) as error:
            self.warnings.append(f"cannot read IPVS ({getattr(error, 'msg', error)}): IPVS reported as unknown")
            return None
        try:
            table = kernel.read(real_servers=False)
            foreign = [key for key, service in table.items() if owner is not None and not owner.contains(service)]
            if foreign:
                table.update(kernel.read(keys=foreign))
            return table
        finally:
            kernel.close()

    # everything --------------------------------------------------------------------------------

    def read(self, scope=None, parts=("iptables", "ipvs", "nftables")):
        """(NodeState, extra facts) for the families asked for; ``scope`` are the checked settings
        of the scope option (``_dataplane.validate_scope``); ``parts`` limits what is read."""
        scope = scope or dp.validate_scope({})
        dummy_interface = scope["dummy_interface"]
        node = dp.NodeState()
        extra = {"ipvs_readable": True, "ipvs_total": 0, "foreign_services": 0, "foreign": [], "owned_vips": [],
                 "dummy_exists": None, "other_kube_sets": []}
        set_names = self.ipsets.names() if ("iptables" in parts or "ipvs" in parts) else []
        for family in self.families:
            family_state = node.families[family]
            if "iptables" in parts or "ipvs" in parts:
                self.read_iptables(family_state)
                family_state.sets = list(set_names)
        extra["other_kube_sets"] = [name for name in set_names if dp.classify_set(name)[0] == "unknown-kube"]
        if "ipvs" in parts:
            exists, addresses = self.read_link(dummy_interface)
            extra["dummy_exists"] = exists
            if exists:
                node.dummy_link = dummy_interface
                node.dummy_addresses = addresses
            owner = Scope(cidrs=scope["cidrs"], addresses=addresses, node_port_cidrs=scope["node_port_cidrs"],
                          node_port_range=scope["node_port_range"])
            table = self.read_ipvs(owner)
            if table is None:
                extra["ipvs_readable"] = False
                table = {}
            for service in table.values():
                family = service.family
                if not owner.contains(service):
                    extra["foreign"].append(service_entry(service))
                elif family in self.families:
                    self.services[service.label()] = service
                    node.families[family].ipvs_services.append(service.label())
                    if service.address not in extra["owned_vips"]:
                        extra["owned_vips"].append(service.address)
            extra["ipvs_total"] = len(table)
            extra["foreign_services"] = len(extra["foreign"])
        if "nftables" in parts:
            tables = self.nftables.list_tables()
            for family in self.families:
                node.families[family].nft_table = (NFT[family], dp.NFT_TABLE) in tables
                if node.families[family].nft_table:
                    node.families[family].nft_service_ports = self.read_nft_service_ports(NFT[family])
        return node, extra

    def read_nft_service_ports(self, nft_family):
        """The keys of the kube-proxy table's service map and of its map of Services without endpoints
        (which it rejects); none of a map the table does not have."""
        ports = set()
        for name in (NFT_SERVICE_MAP, NFT_NO_ENDPOINT_MAP):
            out = self.nftables.list_map(nft_family, dp.NFT_TABLE, name)
            if out is None:
                continue
            try:
                ports.update(dp.nftables_service_ports(json.loads(out or "{}")))
            except ValueError as error:
                raise KubeIpvsError(f"nft -j list map printed something that is not JSON: {error}") from None
        return sorted(ports)

    def ipvs_loaded(self):
        return os.path.exists(self._proc(PROC_IP_VS))

    def loaded_modules(self):
        text = _read_file(self._proc("/proc/modules")) or ""
        names = [line.split(" ", 1)[0] for line in text.splitlines() if line]
        return sorted(name for name in names if name.startswith(MODULE_PREFIXES))

    def ipv6(self):
        """Whether the kernel has IPv6 (``/proc/net/if_inet6``) and whether it is switched off
        (``net.ipv6.conf.all.disable_ipv6``; None when unknown) - where kube-proxy runs its IPv6 proxier."""
        disabled = _read_file(self._proc("/proc/sys/net/ipv6/conf/all/disable_ipv6"))
        return {"kernel": os.path.exists(self._proc("/proc/net/if_inet6")),
                "disabled": None if disabled is None or disabled.strip() not in ("0", "1") else disabled.strip() == "1"}

    def conntrack(self):
        values = {}
        for key in ("count", "max"):
            text = _read_file(self._proc(f"/proc/sys/net/netfilter/nf_conntrack_{key}"))
            values[key] = int(text) if text and text.strip().isdigit() else None
        return values


class TableRefused(KubeIpvsError):
    """iptables refused a cleanup transaction that was built from the table as read. Most often the table
    changed in between: a running kube-proxy's sync rewrites the chains both iptables-based modes share
    (a rule the cleanup deletes from nat KUBE-SERVICES is gone at once). Nothing of that table changed."""


class PlanApplier:
    """Applies a _dataplane.CleanupPlan in its order: iptables transactions (jumps, flushes, deletes),
    then ipsets (no rule matches them any more), IPVS services, the dummy link, nftables tables."""

    def __init__(self, reader, drain_seconds=0, sleep=None):
        self.reader = reader
        self.drain_seconds = drain_seconds
        self.sleep = sleep or time.sleep

    def primary_ipv4(self, ip):
        """The first global IPv4 address of the default route's device, or None."""
        run = self.reader.commands.run
        rc, out, _err = run([ip, "-j", "-4", "route", "show", "default"])
        routes = json.loads(out or "[]") if rc == 0 else []
        device = next((route.get("dev") for route in routes if route.get("dev")), None)
        if not device:
            return None
        rc, out, _err = run([ip, "-j", "-4", "addr", "show", "dev", device, "scope", "global"])
        for link in json.loads(out or "[]") if rc == 0 else []:
            for info in link.get("addr_info") or []:
                if info.get("family") == INET[IPV4] and info.get("local"):
                    return info["local"]
        return None

    def drain_link(self, link_name, addresses):
        """Before the dummy link goes: point its IPv4 addresses' local routes at the node's primary
        address as preferred source and wait. A connection the node itself opens to a VIP on the link
        takes the VIP as source address; when the link goes, replies to it have nowhere to go. New
        connections now take the primary address, and the open ones finish while the VIPs stay local."""
        ip = self.reader.commands.which("ip")
        vips = [a for a in addresses if ":" not in a]
        source = self.primary_ipv4(ip) if ip and vips and self.drain_seconds > 0 else None
        if not source:
            return
        for vip in vips:
            self.reader.commands.check([ip, "-4", "route", "replace", "table", "local", "local", vip, "dev", link_name,
                                        "proto", "kernel", "scope", "host", "src", source],
                                       what=f"preferring source {source} for {vip} on {link_name}")
        self.sleep(self.drain_seconds)

    def apply(self, plan):
        reader = self.reader
        for table in plan.tables:
            if not table.changed:
                continue
            tools = reader.tools[(table.backend, table.family)]
            try:
                reader.iptables[table.family].restore(tools, table.render(), f"{tools.restore} refused the cleanup "
                                                      f"of {table.family}/{table.table}; that table is unchanged")
            except KubeIpvsError as error:
                raise TableRefused(error.msg, **error.details) from None
        for name in plan.sets:
            reader.ipsets.destroy(name)
        if plan.ipvs_services:
            kernel = self.reader.ipvs_factory()
            try:
                kernel.apply([(DEL_SERVICE, self.reader.services[label], None) for label in plan.ipvs_services])
            finally:
                kernel.close()
        if plan.links:
            if self.reader.link is None or self.reader.link.kind != "dummy":
                raise KubeIpvsError(f"refusing to delete link {plan.links[0]}: only a dummy link is kube-proxy's")
            self.drain_link(plan.links[0], self.reader.link_addresses)
            links = self.reader.link_factory()
            try:
                links.delete_link(self.reader.link)
            finally:
                links.close()
        for family, name in plan.nft_tables:
            reader.nftables.delete_table(family, name)
