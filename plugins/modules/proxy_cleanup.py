#!/usr/bin/python
# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: proxy_cleanup
short_description: Remove the leftovers of one kube-proxy mode from a node
version_added: 0.1.0
author: kubeipvs.node maintainers (@kubeipvs)
description:
  - Removes what kube-proxy left on a node in one O(mode), and nothing else - the step a mode
    switch needs after the new kube-proxy runs (kube-proxy itself cleans up nothing when the mode
    changes, and its C(--cleanup) flushes every IPVS service on the host).
  - V(iptables) - the per-service nat chains (C(KUBE-SVC-), C(KUBE-SVL-), C(KUBE-SEP-),
    C(KUBE-FW-), C(KUBE-EXT-), and C(KUBE-XLB-) of older releases), nat C(KUBE-NODEPORTS),
    filter C(KUBE-SERVICES), C(KUBE-EXTERNAL-SERVICES), C(KUBE-NODEPORTS), and the
    C(KUBE-PROXY-CANARY) chains of nat, filter and mangle.
  - V(ipvs) - IPVS services inside O(scope) (never a flush - services outside it survive), the
    dummy link (C(kube-ipvs0)), kube-proxy's ipsets (C(KUBE-) and C(KUBE-6-) names, including
    older ones), nat C(KUBE-NODE-PORT), C(KUBE-LOAD-BALANCER), filter C(KUBE-NODE-PORT),
    C(KUBE-SOURCE-RANGES-FIREWALL), C(KUBE-IPVS-FILTER), C(KUBE-IPVS-OUT-FILTER).
  - Chains both modes use (nat C(KUBE-SERVICES), C(KUBE-POSTROUTING), C(KUBE-MARK-MASQ),
    C(KUBE-MARK-DROP), C(KUBE-FIREWALL); filter C(KUBE-FORWARD), C(KUBE-PROXY-FIREWALL)) go only
    when the other of the two modes does not show on the node; otherwise only their rules that
    point at removed chains or sets go.
  - V(nftables) - the C(kube-proxy) tables of the ip and ip6 families.
  - kubelet's chains (filter C(KUBE-FIREWALL), C(KUBE-KUBELET-CANARY)) and every object kube-proxy
    does not name are never touched. If a rule in such a chain still jumps to a chain or matches a
    set that would go, the task fails before changing anything.
  - Order - per table one C(iptables-restore --noflush) transaction (jumps from built-in chains,
    then other rules that point at removed objects, then flushes, then chain deletions), then
    ipsets, IPVS services, the link, nftables tables. Each iptables backend (nft, and legacy
    where the kernel has legacy tables) and family is cleaned.
  - A running kube-proxy rewrites the chains both iptables-based modes share at every sync, so a
    transaction built from what was read may be refused (a rule it deletes is gone already); the
    node is then read again and what is left is cleaned up, three times in all before the task fails.
extends_documentation_fragment:
  - kubeipvs.node.attributes
options:
  mode:
    description: The kube-proxy mode whose leftovers go.
    type: str
    required: true
    choices: [iptables, ipvs, nftables]
  scope:
    description: Which IPVS services are kube-proxy's (O(mode=ipvs) only).
    type: dict
    default: {}
    suboptions:
      cidrs:
        description:
          - Services whose virtual IP lies in one of these networks go, on every port (the service CIDRs).
        type: list
        elements: str
        default: []
      dummy_interface:
        description:
          - Services whose virtual IP is an address on this link go, and so does the link.
          - Only a dummy link is kube-proxy's; a link of this name of another type is left alone and
            owns no services.
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
    description: Address families to clean.
    type: str
    choices: [ipv4, ipv6, both]
    default: both
  drain_seconds:
    description:
      - With O(mode=ipvs), before the dummy link goes - make the node's own new connections to the
        link's IPv4 addresses take the node's primary address as source, then wait this many seconds
        (0-300). A connection the node opens to a VIP on the link has the VIP as source address, and
        the replies to it have nowhere to go once the link is gone; this lets those connections finish
        while the traffic already flows through another mode's rules (a mode switch). V(0) deletes at once.
    type: int
    default: 0
notes:
  - Needs root. IPVS and links are handled with the collection's own netlink code (no pyroute2
    needed); IPVS is only read when C(ip_vs) is loaded.
"""

EXAMPLES = r"""
- name: After the switch to ipvs, remove what iptables mode left
  kubeipvs.node.proxy_cleanup:
    mode: iptables

- name: After the switch to nftables, remove what ipvs mode left (keepalived's VIPs survive)
  kubeipvs.node.proxy_cleanup:
    mode: ipvs
    scope:
      cidrs: [10.96.0.0/12]
      node_port_cidrs: [0.0.0.0/0, "::/0"]
"""

RETURN = r"""
removed:
  description: What went (or would go in check mode), per kind.
  returned: always
  type: dict
  contains:
    iptables:
      description: Per backend, family and table, the rules deleted and the chains flushed and deleted.
      type: list
      elements: dict
      sample: [{backend: nft, family: ipv4, table: nat, where: nft/ipv4/nat,
                rules: ["-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"],
                chains: [KUBE-SERVICES, KUBE-SVC-ABCDEF0123456789]}]
    ipsets:
      description: ipsets destroyed.
      type: list
      elements: str
      sample: [KUBE-CLUSTER-IP, KUBE-6-CLUSTER-IP]
    ipvs_services:
      description: IPVS services deleted.
      type: list
      elements: str
      sample: [tcp/10.96.0.1:443]
    links:
      description: Links deleted.
      type: list
      elements: str
      sample: [kube-ipvs0]
    nftables_tables:
      description: nftables tables deleted, as "family name".
      type: list
      elements: str
      sample: [ip kube-proxy, ip6 kube-proxy]
kept_shared:
  description: Chains both kube-proxy modes use that stayed because the other mode still shows on the node.
  returned: always
  type: list
  elements: str
  sample: [nft/ipv4/nat/KUBE-SERVICES]
commands:
  description: The iptables-restore batches (one per backend, family and table).
  returned: always
  type: list
  elements: str
  sample: ["*nat\n-D PREROUTING -j KUBE-SERVICES\n:KUBE-SERVICES - [0:0]\n-X KUBE-SERVICES\nCOMMIT\n"]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError, ansible_module, run_module
from ansible_collections.kubeipvs.node.plugins.module_utils.node._commands import Commands
from ansible_collections.kubeipvs.node.plugins.module_utils.node._dataplane import (
    SCOPE_AND_FAMILY_ARGS,
    NodeReader,
    PlanApplier,
    TableRefused,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.node._ipvs import IpvsKernel
from ansible_collections.kubeipvs.node.plugins.module_utils.node._links import LinkKernel
from ansible_collections.kubeipvs.node.plugins.module_utils.pure import _dataplane as dp
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._dataplane import validate_scope
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import FAMILIES, IPV4, IPV6

FAMILY_CHOICES = {"ipv4": (IPV4,), "ipv6": (IPV6,), "both": FAMILIES}
PARTS = {"iptables": ("iptables",), "ipvs": ("iptables", "ipvs"), "nftables": ("nftables",)}


# A transaction iptables refuses is built again from a new read this many times in all: a running
# kube-proxy rewrites the chains both iptables-based modes share at every sync (TableRefused).
ATTEMPTS = 3


def read_and_plan(commands, mode, scope, families, link):
    """The node as read now, and the cleanup plan for it."""
    reader = NodeReader(commands, families, ipvs_factory=IpvsKernel, link_factory=LinkKernel)
    node, extra = reader.read(scope, parts=PARTS[mode])
    if mode == "ipvs" and not extra["ipvs_readable"]:
        raise KubeIpvsError("cannot read IPVS on this node, so the services inside scope cannot be told from "
                            "foreign ones; nothing was changed", warnings=reader.warnings)
    try:
        plan = dp.plan_cleanup(mode, node, families, dummy_interface=link)
    except dp.ForeignReference as error:
        raise KubeIpvsError(
            f"cannot clean up {mode} mode: rules kube-proxy does not own still use its chains or sets; remove or "
            f"change them first, nothing was changed: {'; '.join(error.references[:10])}",
            referencing_rules=error.references) from None
    return reader, node, plan


def cleanup(module):
    params = module.params
    mode = params["mode"]
    scope = validate_scope(params["scope"] or {})
    link = scope["dummy_interface"]
    families = FAMILY_CHOICES[params["family"]]
    if not 0 <= params["drain_seconds"] <= 300:
        raise KubeIpvsError(f"drain_seconds must be 0-300, got {params['drain_seconds']}")

    commands = Commands.of(module)
    first = None
    for attempt in range(1, ATTEMPTS + 1):
        reader, node, plan = read_and_plan(commands, mode, scope, families, link)
        if first is None:
            first = node, plan
            for warning in reader.warnings:
                module.warn(warning)
        if not plan.changed or module.check_mode:
            break
        try:
            PlanApplier(reader, drain_seconds=params["drain_seconds"]).apply(plan)
            break
        except TableRefused as error:
            # Read the node again and clean up what is left: what applied before the refusal is done.
            if attempt == ATTEMPTS:
                raise KubeIpvsError(f"{error.msg} (tried {ATTEMPTS} times, reading the node again each time)",
                                    **error.details) from None
    node, plan = first
    before = dp.objects_of(mode, node, families)
    gone = dp.removed_names(plan)
    result = {
        "changed": plan.changed,
        "removed": plan.summary(),
        "kept_shared": plan.kept_shared,
        "commands": [table.render() for table in plan.tables if table.changed],
    }
    if module._diff:
        result["diff"] = {
            "before_header": f"{mode} mode objects",
            "after_header": f"{mode} mode objects",
            "before": "".join(name + "\n" for name in before),
            "after": "".join(name + "\n" for name in before if name not in gone),
        }
    return result


def build_module():
    return ansible_module(
        AnsibleModule,
        argument_spec={
            "mode": {"type": "str", "required": True, "choices": list(dp.MODES)},
            "drain_seconds": {"type": "int", "default": 0},
            **SCOPE_AND_FAMILY_ARGS,
        },
        supports_check_mode=True,
    )


def main():
    run_module(build_module(), cleanup)


if __name__ == "__main__":
    main()
