#!/usr/bin/python
# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: conntrack_flows
short_description: Delete the connection tracking entries of flows to Service addresses
version_added: 0.1.0
author: kubeipvs.node maintainers (@kubeipvs)
description:
  - Deletes the conntrack entries of one protocol whose original destination lies in the given
    networks, as kube-proxy does for UDP Services whose endpoints went away, so the next packet of
    such a flow is a new connection that the node's current rules translate again.
  - Why it matters in a mode switch - an IPVS-mode flow is translated by IPVS, not by the
    connection tracker's NAT, so once IPVS stops serving it a long-lived UDP flow (a resolver
    asking from one source port) matches its old entry, is translated by nobody and is lost until
    the entry expires. Deleted while IPVS still serves, the flow moves to the rules of the new mode.
  - Uses the C(conntrack) tool (package C(conntrack)); the other entries of the table are not touched.
extends_documentation_fragment:
  - kubeipvs.node.attributes
options:
  destinations:
    description: Networks (CIDR) of the original destination - the Service CIDRs, for example.
    type: list
    elements: str
    required: true
  protocol:
    description: The flows' protocol.
    type: str
    choices: [udp, tcp, sctp]
    default: udp
  state:
    description: V(absent) deletes the matching entries.
    type: str
    choices: [absent]
    default: absent
notes:
  - Needs root. In check mode the entries are counted (C(conntrack -L)), not deleted.
  - An entry deleted while its flow is quiet is simply made again by its next packet. TCP
    connections must not be cut this way; delete TCP entries only when that is what is wanted.
"""

EXAMPLES = r"""
- name: Move UDP flows to ClusterIPs onto the rules of the new mode before IPVS stops serving them
  kubeipvs.node.conntrack_flows:
    destinations: [10.96.0.0/12, "fd00:10:96::/112"]
    protocol: udp
"""

RETURN = r"""
deleted:
  description: Entries deleted (or that would be, in check mode), per network.
  returned: always
  type: dict
  sample: {"10.96.0.0/12": 3, "fd00:10:96::/112": 0}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import run_module
from ansible_collections.kubeipvs.node.plugins.module_utils.node._commands import Commands
from ansible_collections.kubeipvs.node.plugins.module_utils.node._conntrack import ConntrackFlows
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._conntrack import flow_destinations


def delete_flows(module):
    params = module.params
    by_family = flow_destinations(params["destinations"])
    flows = ConntrackFlows(Commands.of(module))
    act = flows.count if module.check_mode else flows.delete
    deleted = {network: act(params["protocol"], family, network)
               for family, networks in by_family.items() for network in networks}
    result = {"changed": any(deleted.values()), "deleted": deleted}
    if module._diff:
        result["diff"] = {"before": {network: f"{count} {params['protocol']} flow(s)" for network, count
                                     in deleted.items()},
                          "after": dict.fromkeys(deleted, f"0 {params['protocol']} flow(s)")}
    return result


def main():
    module = AnsibleModule(
        argument_spec={
            "destinations": {"type": "list", "elements": "str", "required": True},
            "protocol": {"type": "str", "choices": ["udp", "tcp", "sctp"], "default": "udp"},
            "state": {"type": "str", "choices": ["absent"], "default": "absent"},
        },
        supports_check_mode=True,
    )
    run_module(module, delete_flows)


if __name__ == "__main__":
    main()
