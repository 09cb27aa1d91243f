#!/usr/bin/python
# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: dataplane_facts
short_description: Report which kube-proxy mode a node's dataplane is in
version_added: 0.1.0
author: kubeipvs.node maintainers (@kubeipvs)
description:
  - Reads the node once and reports what kube-proxy left in the kernel - IPVS services (and which
    of them are owned), the addresses on C(kube-ipvs0), kube-proxy's ipsets, iptables-mode and
    ipvs-mode chains per table, family and iptables backend, nftables C(kube-proxy) tables, loaded
    kernel modules and conntrack usage - and the mode those imply.
  - The mode is V(iptables), V(ipvs), V(nftables), V(none), or V(mixed) when more than one shows
    (for example in the middle of a mode switch); RV(dataplane.modes) lists them and
    RV(dataplane.evidence) says why.
  - Chains both kube-proxy modes create (nat C(KUBE-SERVICES), C(KUBE-POSTROUTING),
    C(KUBE-MARK-MASQ), filter C(KUBE-FORWARD), C(KUBE-PROXY-FIREWALL)) prove no mode by themselves.
  - Read-only; never loads a kernel module. When C(ip_vs) is not loaded the IPVS part is empty.
    IPVS and links are read with the collection's own netlink code (no pyroute2 needed); if they
    cannot be read the IPVS part is reported as unknown with a warning and the rest still works.
  - Also sets the fact C(kubeipvs_dataplane).
extends_documentation_fragment:
  - kubeipvs.node.state_src
  - kubeipvs.node.attributes.read_only
  - kubeipvs.node.attributes
options:
  scope:
    description: Which IPVS services count as owned (kube-proxy's).
    type: dict
    default: {}
    suboptions:
      cidrs:
        description: Services whose virtual IP lies in one of these networks are owned, on every port.
        type: list
        elements: str
        default: []
      dummy_interface:
        description: Services whose virtual IP is an address on this link are owned.
        type: str
        default: kube-ipvs0
      node_port_cidrs:
        description:
          - Addresses where only ports inside O(scope.node_port_range) are owned - the node's own
            addresses, where kube-proxy owns its NodePorts and health-check node ports and nothing
            else. A keepalived service on a node address and another port stays foreign.
          - V(0.0.0.0/0) and V(::/0) stand for every address, kube-proxy's default
            C(nodePortAddresses).
        type: list
        elements: str
        default: []
      node_port_range:
        description: The cluster's NodePort range (the API server's C(--service-node-port-range)).
        type: str
        default: 30000-32767
  family:
    description: Address families to look at.
    type: str
    choices: [ipv4, ipv6, both]
    default: both
  expect_service_ports:
    description:
      - The VIP ports the node should answer on, spelled as RV(dataplane.service_ports) spells them
        (C(protocol/address:port), IPv6 in brackets) - what M(kubeipvs.node.kube_proxy_state)'s
        RV(kubeipvs.node.kube_proxy_state#module:cluster_ip_ports) lists, or its C(dataplane_facts) state
        file holds.
      - When given, RV(missing_service_ports) says which of them each mode that shows on the node does
        not serve. A mode switch checks its target mode this way, with the list shipped as a file.
    type: list
    elements: str
notes:
  - O(state_src) may hold O(expect_service_ports).
  - Needs root. Reads C(iptables-save)/C(ip6tables-save) (nft backend, and the legacy backend
    only for tables the kernel already has), C(ipset list -n), C(nft -j list tables), /proc/modules
    and the conntrack sysctls.
"""

EXAMPLES = r"""
- name: What is this node running?
  kubeipvs.node.dataplane_facts:
    scope:
      cidrs: [10.96.0.0/12]

- name: Stop when the node is half-switched
  ansible.builtin.assert:
    that: kubeipvs_dataplane.mode != 'mixed'
    fail_msg: "leftovers of {{ kubeipvs_dataplane.modes }}: {{ kubeipvs_dataplane.evidence }}"
"""

RETURN = r"""
missing_service_ports:
  description:
    - With O(expect_service_ports) - per mode that shows on the node (RV(dataplane.modes)), the expected
      ports that mode does not serve, sorted. Empty lists when every mode serves them all.
  returned: when O(expect_service_ports) is given (directly or in O(state_src))
  type: dict
  sample: {ipvs: [], nftables: ["udp/10.96.0.10:53"]}
expected_service_ports:
  description: With O(expect_service_ports) - how many ports were expected.
  returned: when O(expect_service_ports) is given (directly or in O(state_src))
  type: int
  sample: 2003
dataplane:
  description: The node's kube-proxy dataplane (also returned as the fact C(kubeipvs_dataplane)).
  returned: always
  type: dict
  contains:
    mode:
      description: V(iptables), V(ipvs), V(nftables), V(none) or V(mixed).
      type: str
      sample: ipvs
    modes:
      description: Every mode that shows on the node.
      type: list
      elements: str
      sample: [ipvs]
    evidence:
      description: Per mode, the objects that prove it (chains as table/name, ipsets, IPVS services, links, tables).
      type: dict
      sample: {iptables: [], ipvs: ["nat/KUBE-LOAD-BALANCER", "ipset KUBE-CLUSTER-IP"], nftables: []}
    ipvs:
      description:
        - IPVS services - total, owned, foreign, owned VIPs; C(known=false) when IPVS could not be read.
        - C(foreign) lists every service outside O(scope) whole, in the input format of
          M(kubeipvs.node.ipvs_sync), so it can be put back exactly (what kube-proxy's start in
          nftables mode flushes).
      type: dict
      sample: {loaded: true, known: true, services: 12, owned_services: 11, foreign_services: 1,
               foreign: [{family: inet, protocol: tcp, address: 192.0.2.50, port: 80, scheduler: wlc,
                          real_servers: [{address: 192.0.2.51, port: 80, weight: 1, forwarding: nat}]}],
               owned_vips: ["10.96.0.1"]}
    dummy_interface:
      description: The dummy link, whether it exists (null when unknown) and its addresses.
      type: dict
      sample: {name: kube-ipvs0, present: true, addresses: ["10.96.0.1", "10.96.0.10"]}
    node_port_addresses:
      description:
        - The node's addresses kube-proxy's IPVS mode opens NodePorts on - every link's but the dummy
          link's, inside O(scope.node_port_cidrs) (kube-proxy's C(nodePortAddresses)), never loopback ones;
          with no such CIDRs (or a zero-length one, kube-proxy's default) every address but loopback and
          IPv6 link-local ones. Null when the links could not be read.
        - The O(kubeipvs.node.kube_proxy_state#module:node_port_addresses) of this node.
      type: list
      elements: str
      sample: ["10.244.1.1", "192.168.200.1", "fd00:10:244:1::1"]
    ipsets:
      description: kube-proxy's ipsets present (C(kube_proxy)) and other C(KUBE-) sets no mode claims (C(other_kube)).
      type: dict
      sample: {kube_proxy: [KUBE-CLUSTER-IP, KUBE-LOOP-BACK], other_kube: []}
    iptables:
      description: >-
        Per family, per backend and table, the C(KUBE-) chains other than per-service ones, and
        the number of per-service chains (KUBE-SVC-, KUBE-SEP-, ...).
      type: dict
      sample: {ipv4: {nft: {nat: {chains: [KUBE-SERVICES, KUBE-POSTROUTING], service_chains: 42}}}}
    nftables:
      description: The C(kube-proxy) nftables tables present, as "family name".
      type: list
      elements: str
      sample: ["ip kube-proxy"]
    service_ports:
      description:
        - Per mode, the VIP ports the node answers on, as C(protocol/address:port) - iptables mode's
          nat C(KUBE-SERVICES) rules that jump to a per-service chain and filter C(KUBE-SERVICES) rules
          that reject a Service without endpoints, the owned IPVS services (fwmark services left out;
          one without real servers too), and the keys of nftables mode's C(service-ips) and
          C(no-endpoint-services) maps - a port a mode rejects for want of endpoints is one it handles.
        - A mode switch compares the target mode's list with the ClusterIP ports the cluster has.
      type: dict
      sample: {iptables: [], ipvs: ["tcp/10.96.0.1:443", "udp/10.96.0.10:53"], nftables: []}
    modules:
      description: Loaded kernel modules that matter here (ip_vs*, nf_conntrack*, ip_set*, nf_tables, ...).
      type: list
      elements: str
      sample: [ip_vs, ip_vs_rr, nf_conntrack]
    conntrack:
      description: Conntrack entries in use and the limit (null when nf_conntrack is not loaded).
      type: dict
      sample: {count: 112, max: 131072}
    ipv6:
      description:
        - Whether the kernel has IPv6 (C(kernel), C(/proc/net/if_inet6) present) and whether
          C(net.ipv6.conf.all.disable_ipv6) switches it off (C(disabled), null when unknown). kube-proxy
          runs its IPv6 proxier - the IPv6 chains, C(KUBE-6-*) sets and C(ip6) table - wherever IPv6 is
          on, also in an IPv4-only cluster; a mode switch pre-programs those too.
      type: dict
      sample: {kernel: true, disabled: false}
    kernel:
      description: The running kernel's release (what decides whether nftables mode is possible).
      type: str
      sample: 6.1.0-50-amd64
    tools:
      description: Whether each tool a kube-proxy mode is programmed and cleaned with is installed.
      type: dict
      sample: {ipset: true, ipvsadm: true, iptables: true, nft: false}
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError, run_module
from ansible_collections.kubeipvs.node.plugins.module_utils.node._commands import Commands
from ansible_collections.kubeipvs.node.plugins.module_utils.node._dataplane import SCOPE_AND_FAMILY_ARGS, NodeReader
from ansible_collections.kubeipvs.node.plugins.module_utils.node._ipvs import IpvsKernel
from ansible_collections.kubeipvs.node.plugins.module_utils.node._links import LinkKernel
from ansible_collections.kubeipvs.node.plugins.module_utils.node._state_files import state_module
from ansible_collections.kubeipvs.node.plugins.module_utils.pure import _dataplane as dp
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._dataplane import validate_scope
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import FAMILIES, IPV4, IPV6, NFT
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._links import node_port_addresses

FAMILY_CHOICES = {"ipv4": (IPV4,), "ipv6": (IPV6,), "both": FAMILIES}
TOOLS = ("ipset", "ipvsadm", "iptables", "nft")


def make_reader(module, families):
    return NodeReader(Commands.of(module), families, ipvs_factory=IpvsKernel, link_factory=LinkKernel)


def iptables_report(node, families):
    report = {}
    for family in families:
        per_backend = report.setdefault(family, {})
        for (backend, table), state in sorted(node.families[family].tables.items()):
            kube = [name for name in state.chains if name.startswith("KUBE-")]
            if not kube:
                continue
            per_backend.setdefault(backend, {})[table] = {
                "chains": [name for name in kube if not dp.is_service_chain(name)],
                "service_chains": sum(1 for name in kube if dp.is_service_chain(name)),
            }
    return report


def gather(module):
    scope = validate_scope(module.params["scope"] or {})
    expected = module.params["expect_service_ports"]
    if expected is not None:
        try:
            expected = dp.check_port_labels(expected, "expect_service_ports")
        except ValueError as error:
            raise KubeIpvsError(str(error)) from None
    link = scope["dummy_interface"]
    families = FAMILY_CHOICES[module.params["family"]]
    reader = make_reader(module, families)
    node, extra = reader.read(scope)
    mode, modes, evidence = dp.infer_mode(node, families)
    sets = node.families[families[0]].sets
    own_sets = [name for family in families for name in dp.ipvs_set_names(family)]
    dataplane = {
        "mode": mode,
        "modes": modes,
        "evidence": evidence,
        "ipvs": {
            "loaded": reader.ipvs_loaded(),
            "known": extra["ipvs_readable"],
            "services": extra["ipvs_total"],
            "owned_services": sum(len(node.families[family].ipvs_services) for family in families),
            "foreign_services": extra["foreign_services"],
            "foreign": extra["foreign"],
            "owned_vips": sorted(extra["owned_vips"]),
        },
        "dummy_interface": {"name": link, "present": extra["dummy_exists"], "addresses": node.dummy_addresses},
        "node_port_addresses": (None if reader.local_addresses is None else
                                node_port_addresses(reader.local_addresses, scope["node_port_cidrs"])),
        "ipsets": {"kube_proxy": sorted(name for name in sets if name in own_sets),
                   "other_kube": sorted(extra["other_kube_sets"])},
        "iptables": iptables_report(node, families),
        "nftables": [f"{NFT[family]} {dp.NFT_TABLE}" for family in families
                     if node.families[family].nft_table],
        "service_ports": dp.service_ports(node, families),
        "modules": reader.loaded_modules(),
        "conntrack": reader.conntrack(),
        "ipv6": reader.ipv6(),
        "kernel": os.uname().release,
        "tools": {name: bool(module.get_bin_path(name)) for name in TOOLS},
    }
    for warning in reader.warnings:
        module.warn(warning)
    result = {"changed": False, "dataplane": dataplane, "ansible_facts": {"kubeipvs_dataplane": dataplane}}
    if expected is not None:
        result["expected_service_ports"] = len(expected)
        result["missing_service_ports"] = dp.missing_service_ports(expected, dataplane["service_ports"], modes)
    return result


def build_module():
    return state_module(
        AnsibleModule,
        state_options=("expect_service_ports",),
        argument_spec=dict(SCOPE_AND_FAMILY_ARGS, expect_service_ports={"type": "list", "elements": "str"}),
        supports_check_mode=True,
    )


def main():
    run_module(build_module(), gather)


if __name__ == "__main__":
    main()
