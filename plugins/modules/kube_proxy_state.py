#!/usr/bin/python
# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: kube_proxy_state
short_description: Compute what kube-proxy programs on a node in IPVS, iptables or nftables mode
version_added: 0.1.0
author: kubeipvs.node maintainers (@kubeipvs)
description:
  - Reads every Service and every EndpointSlice (C(discovery.k8s.io/v1)) and computes, for one
    node, what kube-proxy would program there in O(mode) - in IPVS mode the addresses of
    C(kube-ipvs0), the IPVS virtual and real servers, the members of its ipsets and the iptables
    rules that match them (input of M(kubeipvs.node.dummy_interface), M(kubeipvs.node.ipvs_sync),
    M(kubeipvs.node.ipset) and M(kubeipvs.node.iptables_chain)); in iptables mode its nat and filter chains (input of M(kubeipvs.node.iptables_chain)); in
    nftables mode its C(kube-proxy) tables (input of M(kubeipvs.node.nftables_table)).
  - A mode switch programs the target mode with this before restarting kube-proxy, so Services
    answer throughout (see the mode_switch role).
  - Follows kube-proxy's rules - ClusterIPs, externalIPs, LoadBalancer ingress IPs (not those with
    C(ipMode=Proxy)) and NodePorts on each node IP; session affinity C(ClientIP) as persistence
    (default 10800 seconds); ready endpoints, or serving and terminating ones when none is ready;
    C(externalTrafficPolicy=Local) and C(internalTrafficPolicy=Local) use this node's endpoints
    (and, as kube-proxy does, the cluster-wide ones when the node has none for external traffic).
  - IPv4 and IPv6 (dual-stack Services, IPv6 EndpointSlices, ipsets named C(KUBE-6-*)).
  - Read-only - never changes anything, so check mode is the same as a normal run.
  - Topology-aware routing (a Service's C(trafficDistribution), or its topology-mode annotation) as
    kube-proxy follows it, from the EndpointSlices' hints - when every ready endpoint is hinted for
    some node and one for this node, the cluster-wide endpoints are those hinted for this node; else,
    likewise with zone hints and the Node's C(topology.kubernetes.io/zone) label, which is read (one
    more GET or LIST of Nodes) only when an endpoint has zone hints.
extends_documentation_fragment:
  - kubeipvs.node.attributes.read_only
  - kubeipvs.node.attributes.api
  - kubeipvs.node.attributes
  - kubeipvs.node.k8s_auth
options:
  node_name:
    description:
      - The node, as in the EndpointSlices' C(nodeName) (and the Node object's name).
      - One of O(node_name) and O(nodes) is required.
    type: str
  nodes:
    description:
      - Several nodes in one call, instead of O(node_name) - the cluster is read, checked and parsed
        once, and only what differs between nodes (their endpoints' locality and so the traffic
        policies, their addresses) is worked out per node. Each node's files go to its own folder (its
        O(nodes[].dest), else a folder of O(dest) named after it); the result is RV(nodes).
      - Each entry is checked before the cluster is read - a bad name, a name listed twice or a bad
        address fails the call with nothing written.
      - An empty list reads only the versions (RV(kubernetes_version), RV(kube_proxy_version)) and
        renders no node - what a mode switch's preflight needs.
    type: list
    elements: dict
    suboptions:
      name:
        description: The node's name, as O(node_name).
        type: str
        required: true
      node_ips:
        description:
          - As O(node_ips), for this node. Not given - read from the Node objects (one list for all),
            those of its O(nodes[].ip_families) when given.
        type: list
        elements: str
        default: []
      node_port_addresses:
        description: As O(node_port_addresses), for this node.
        type: list
        elements: str
      ip_families:
        description:
          - As O(ip_families), for this node - the families its kernel runs kube-proxy for (see
            RV(kubeipvs.node.dataplane_facts#module:dataplane.ipv6)), such as V(ipv4) alone for a node
            of a dual-stack cluster whose IPv6 is off. Not given - O(ip_families).
        type: list
        elements: str
        choices: [ipv4, ipv6]
      dest:
        description: The folder for this node's files (created when missing). Not given - O(dest)/O(nodes[].name).
        type: path
  node_ips:
    description:
      - The node's IPs - the first of each family is kube-proxy's node IP (its load-balancer source
        ranges decide whether the node itself may connect), and NodePorts listen on them unless
        O(node_port_addresses) is given. Not given - the Node object's C(InternalIP) addresses, of
        O(ip_families) only when it is given (kube-proxy on a node whose IPv6 is off takes its IPv4 one alone).
    type: list
    elements: str
    default: []
  mode:
    description:
      - The kube-proxy mode to compute the node's state for.
      - V(ipvs) returns RV(dummy_interface), RV(ipvs_sync), RV(ipset), RV(ipsets), RV(ipset_types) and
        RV(iptables_chain); V(iptables) returns RV(iptables_chain); V(nftables) returns RV(nftables_tables).
    type: str
    default: ipvs
    choices: [iptables, ipvs, nftables]
  cluster_cidr:
    description:
      - kube-proxy's C(clusterCIDR) (comma-separated for dual-stack) - every mode masquerades traffic to a
        ClusterIP from outside it. Empty - no such rule, as kube-proxy without it (IPVS mode then masquerades
        what a Service address sends instead).
    type: str
    default: ""
  masquerade_bit:
    description: kube-proxy's C(iptables.masqueradeBit) (0-31) - the mark bit of traffic to masquerade.
    type: int
    default: 14
  masquerade_all:
    description:
      - kube-proxy's C(masqueradeAll) for the mode (C(nftables.masqueradeAll) in nftables mode,
        C(iptables.masqueradeAll) in the others; M(kubeipvs.node.kube_proxy_config) returns it per mode as
        C(settings.masquerade_all)) - masquerade all traffic to a ClusterIP, not only what comes from outside
        O(cluster_cidr).
    type: bool
    default: false
  scheduler:
    description: The IPVS scheduler kube-proxy is configured with (C(ipvs.scheduler)).
    type: str
    default: rr
    choices: [rr, wrr, lc, wlc, lblc, lblcr, sh, dh, sed, nq, mh]
  ip_families:
    description:
      - The IP families the node's kernel runs kube-proxy for, as kube-proxy decides it at its start
        (IPv6 where C(/proc/net/if_inet6) exists and C(net.ipv6.conf.all.disable_ipv6) is not 1;
        M(kubeipvs.node.dataplane_facts) returns both as RV(kubeipvs.node.dataplane_facts#module:dataplane.ipv6)).
      - Both - kube-proxy runs dual-stack, and both are rendered, also in an IPv4-only cluster - its
        (empty) IPv6 objects, the C(ip6 kube-proxy) table, the C(KUBE-6-*) ipsets, the ip6tables chains.
      - One - kube-proxy runs single-stack in that family, and Services of the other family are not
        rendered; the node IPs must all be of that family.
      - Empty - the kernel is not known; the families of the node IPs and of the Services' ClusterIPs.
    type: list
    elements: str
    choices: [ipv4, ipv6]
    default: []
  node_port_addresses:
    description:
      - The node's addresses IPVS mode opens its NodePorts on (those in O(node_port_cidrs) when it limits
        them) - kube-proxy lists the node's interfaces for them, every address but the C(kube-ipvs0) ones,
        loopback and IPv6 link-local by default (M(kubeipvs.node.dataplane_facts) returns them as
        C(node_port_addresses)). An external or load-balancer IP among them is not bound to C(kube-ipvs0).
      - In nftables mode the node's addresses decide whether its node IP of a family is in the
        C(nodeport-ips) set - kube-proxy lists the node's interfaces for it, so a node IP no interface
        holds (IPv6 switched off on a node whose Node lists an IPv6 InternalIP) is not.
      - In iptables mode, where O(node_port_cidrs) limits a family's NodePorts, the node's addresses in
        them are the ones kube-proxy accepts NodePorts on (with C(127.0.0.1) where a CIDR holds it).
      - Not given - O(node_ips), taken as held by the node.
    type: list
    elements: str
  node_port_cidrs:
    description:
      - kube-proxy's C(nodePortAddresses) as configured - CIDRs, or its keywords (C(primary), the node IP
        of each family, as the only entry; from v1.37 also C(localhost) and C(all), anywhere in the list).
        In every mode a family with CIDRs of its own, none of them C(0.0.0.0/0) or C(::/0), accepts NodePorts
        on the node's addresses in them only (see O(node_port_addresses); in IPVS and nftables mode loopback
        addresses never; in IPVS mode C(kube-ipvs0)'s addresses in them too, as kube-proxy lists them once
        bound); in iptables mode it also decides localhost NodePorts (see O(localhost_node_ports)).
      - Empty - kube-proxy's default, every local address in iptables and IPVS mode, C(primary) in nftables
        mode.
      - An entry that is neither a CIDR nor a keyword of the release rendered fails before anything is read.
    type: list
    elements: str
    default: []
  localhost_node_ports:
    description:
      - kube-proxy's C(iptables.localhostNodePorts). In iptables mode, kube-proxy accepts NodePorts on
        C(127.0.0.0/8) when it is true and an IPv4 entry of O(node_port_cidrs) holds C(127.0.0.0) (or there
        is none); it then sets C(net.ipv4.conf.all.route_localnet) to 1, which RV(sysctls) returns, and writes
        the C(KUBE-FIREWALL) rule that drops other traffic to C(127.0.0.0/8).
    type: bool
    default: true
  feature_gates:
    description:
      - kube-proxy's C(featureGates) (C(feature_gates) of RV(kubeipvs.node.kube_proxy_config#module:settings)),
        for the gates that change what it programs, each in the releases where it may be set -
        C(AllowServiceExternalIPs=false) (v1.36 and later) leaves every Service's external IPs out;
        C(PreferSameTrafficDistribution=false) (v1.34) ignores endpoints' node hints.
      - Refused before the cluster is read - C(KubeProxyNFTablesLocalhostNodePorts=true) (v1.37 and later) in
        nftables mode, whose localhost NodePort proxy is not rendered, and C(KubeProxyIPVS=false) (v1.37 and
        later) in IPVS mode, which kube-proxy then refuses.
      - Other gates change nothing kube-proxy programs and are ignored.
    type: dict
    default: {}
  kube_proxy_version:
    description:
      - The kube-proxy release to render for (C(v1.34.4), C(1.34)) - what kube-proxy writes changes
        between releases. Releases v1.34 to v1.37 are reproduced exactly, each proven against its
        binary; an older one is rendered as v1.34, a newer one as v1.37, with a warning.
      - Not given - the version in the image tag of the DaemonSet O(daemonset_name) in
        O(daemonset_namespace), or, where there is no such DaemonSet (or it cannot be read, or its tag
        is no version), the API server's version.
    type: str
  daemonset_name:
    description: The kube-proxy DaemonSet whose image tag gives the version when O(kube_proxy_version) is not given.
    type: str
    default: kube-proxy
  daemonset_namespace:
    description: The namespace of O(daemonset_name).
    type: str
    default: kube-system
  service_cidrs:
    description:
      - The cluster's Service CIDRs - nftables mode drops traffic to an address in them that is no
        ClusterIP. Not given - the C(spec.cidrs) of the cluster's ServiceCIDR objects, as kube-proxy
        reads them (none on a cluster without that API, and then no such rule).
    type: list
    elements: str
  dest:
    description:
      - A directory (created when missing) to write the node modules' inputs to instead of returning them -
        one gzip-compressed JSON file per module call, each the options that module takes from its
        O(kubeipvs.node.ipvs_sync#module:state_src).
        The result then holds RV(state_files), their paths, in place of RV(dummy_interface), RV(ipvs_sync), RV(ipset),
        RV(ipsets), RV(ipset_types), RV(iptables_chain), RV(iptables_chain_unshared), RV(nftables_tables) and
        RV(cluster_ip_ports) (written as the O(kubeipvs.node.dataplane_facts#module:expect_service_ports) of
        M(kubeipvs.node.dataplane_facts), its count staying in RV(counts)).
      - For a large cluster (megabytes of state per node) this keeps the state out of task arguments, results and
        host variables - the way the mode_switch role uses it. Files of the same names are replaced.
      - With O(nodes), one folder per node in it, named after the node - for the nodes without their own
        O(nodes[].dest).
      - The only write of this module - on the controller, in check mode too (the files change nothing on a
        node, and a check run of the node modules needs them); the result is still C(changed=false).
    type: path
seealso:
  - module: kubeipvs.node.ipvs_sync
  - module: kubeipvs.node.dummy_interface
  - module: kubeipvs.node.ipset
  - module: kubeipvs.node.dataplane_facts
"""

EXAMPLES = r"""
- name: The state of every node of the play, from one read of the cluster, as files
  kubeipvs.node.kube_proxy_state:
    nodes:
      - name: node1
      - name: node2
        node_ips: [192.0.2.12]
    mode: nftables
    dest: /var/tmp/kube-proxy-state
  delegate_to: localhost
  run_once: true
  register: kube_proxy_state
- name: What kube-proxy would program on this node
  kubeipvs.node.kube_proxy_state:
    kubeconfig: /etc/kubernetes/admin.conf
    node_name: "{{ inventory_hostname }}"
  delegate_to: localhost
  register: kube_proxy_state

- name: Program it without kube-proxy
  kubeipvs.node.ipvs_sync:
    services: "{{ kube_proxy_state.ipvs_sync.services }}"
    scope:
      dummy_interface: kube-ipvs0
"""

RETURN = r"""
sysctls:
  description:
    - The sysctls kube-proxy's iptables mode sets at its start, as O(kubeipvs.node.sysctl#module:settings) -
      C(net.ipv4.conf.all.route_localnet) where it accepts NodePorts on C(127.0.0.0/8) (see
      O(localhost_node_ports)); kube-proxy sets them live only.
    - With O(nodes), in each node's entry.
  returned: when O(mode=iptables)
  type: dict
  sample: {net.ipv4.conf.all.route_localnet: 1}
dummy_interface:
  description: Input of M(kubeipvs.node.dummy_interface) - C(addresses) to bind to C(kube-ipvs0).
  returned: when O(mode=ipvs) and O(dest) is not given
  type: dict
  sample: {addresses: [10.96.0.1, 10.96.0.10]}
ipset:
  description:
    - Input of M(kubeipvs.node.ipset) - C(sets), every kube-proxy ipset of every family as kube-proxy
      creates it, with exactly its members (use it with O(kubeipvs.node.ipset#module:exclusive=true)).
  returned: when O(mode=ipvs) and O(dest) is not given
  type: dict
  sample:
    sets:
      - {name: KUBE-CLUSTER-IP, type: "hash:ip,port", family: inet, hashsize: 1024, maxelem: 65536, range: null,
         members: ["10.96.0.1,tcp:443"]}
ipvs_sync:
  description:
    - Input of M(kubeipvs.node.ipvs_sync) - C(services), each with its C(real_servers).
    - The virtual servers that depend on the node come first (its NodePorts, those of the Local traffic
      policies), then those the same on every node (ClusterIPs, external and load-balancer IPs without
      the Local policy); each part family by family in address order.
  returned: when O(mode=ipvs) and O(dest) is not given
  type: dict
  sample:
    services:
      - {protocol: tcp, address: 10.96.0.10, port: 53, family: inet, scheduler: rr,
         real_servers: [{address: 10.244.1.5, port: 53, weight: 1, forwarding: nat}]}
iptables_chain:
  description:
    - With O(mode=iptables) - per family (V(ipv4), V(ipv6)) the O(kubeipvs.node.iptables_chain#module:chains)
      input that writes the chains and jumps kube-proxy's iptables mode writes (KUBE-SERVICES,
      KUBE-SVC-*, KUBE-SEP-*, KUBE-EXT-*, KUBE-NODEPORTS, filter KUBE-SERVICES, ...). The chains with
      jumps come first, then the others in the order kube-proxy declares them, the per-Service chains
      of Services that are the same on every node (no Local traffic policy, no source ranges) last.
    - With O(mode=ipvs) - the same for IPVS mode's eleven chains (KUBE-SERVICES, KUBE-NODE-PORT,
      KUBE-LOAD-BALANCER, KUBE-POSTROUTING, KUBE-MARK-MASQ, filter KUBE-FORWARD, KUBE-IPVS-FILTER, ...),
      whose rules match its ipsets; a rule whose set is empty is left out, as kube-proxy does.
  returned: when O(mode=iptables) or O(mode=ipvs), and O(dest) is not given
  type: dict
  sample: {ipv4: [{table: nat, chain: KUBE-MARK-MASQ, rules: ["-j MARK --or-mark 0x4000"], jumps: []}]}
iptables_chain_unshared:
  description:
    - With O(mode=ipvs) - RV(iptables_chain) less the chains iptables mode writes too (nat KUBE-SERVICES,
      KUBE-POSTROUTING, KUBE-MARK-MASQ, filter KUBE-FORWARD, KUBE-PROXY-FIREWALL) - what can be programmed
      while a kube-proxy in iptables mode still runs on the node, which rewrites those and needs its own
      KUBE-SERVICES to translate.
  returned: when O(mode=ipvs) and O(dest) is not given
  type: dict
  sample: {ipv4: [{table: filter, chain: KUBE-IPVS-FILTER, rules: ["-m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN"],
                   jumps: [{chain: INPUT, position: first, args: "", comment: kubernetes ipvs access filter}]}]}
nftables_tables:
  description:
    - With O(mode=nftables) - per family the table kube-proxy's nftables mode writes, as input of
      M(kubeipvs.node.nftables_table) (C(family), C(name), C(content)).
  returned: when O(mode=nftables) and O(dest) is not given
  type: list
  elements: dict
  sample: [{family: ip, name: kube-proxy, content: "chain services { ... }"}]
state_files:
  description:
    - With O(dest) - the paths of the files written, by the result key each replaces; each is the
      O(kubeipvs.node.ipvs_sync#module:state_src) of one node-module call (C(nftables_tables) lists each table's
      C(family) and C(name) with its C(state_src)).
  returned: when O(dest) is given without O(nodes)
  type: dict
  sample:
    dummy_interface: /tmp/state/dummy_interface.json.gz
    ipset: /tmp/state/ipset.json.gz
    ipvs_sync: /tmp/state/ipvs_sync.json.gz
    dataplane_facts: /tmp/state/dataplane_facts.json.gz
    iptables_chain: {ipv4: /tmp/state/iptables_chain-ipv4.json.gz}
    iptables_chain_unshared: {ipv4: /tmp/state/iptables_chain_unshared-ipv4.json.gz}
nodes:
  description:
    - With O(nodes) - per node name its RV(state_files) (in its own folder of O(dest)), RV(counts) and
      RV(node_ips). The other node-specific keys are not returned; the node's ClusterIP ports are in its
      C(dataplane_facts) state file, so the result does not grow with the Services times the nodes.
  returned: when O(nodes) is given
  type: dict
  sample:
    node1:
      state_files: {nftables_tables: [{family: ip, name: kube-proxy, state_src: /tmp/state/node1/nftables_table-ip-kube-proxy.json.gz}],
                    dataplane_facts: /tmp/state/node1/dataplane_facts.json.gz}
      counts: {services_read: 12, endpoint_slices_read: 14, table_lines: 210, cluster_ip_ports: 12}
      node_ips: [192.0.2.11]
mode:
  description: The mode the state was computed for.
  returned: success
  type: str
  sample: ipvs
kubernetes_version:
  description: The API server's C(gitVersion).
  returned: success
  type: str
  sample: v1.34.1
ipsets:
  description: Set name -> members as C(ipset list) prints them, for every kube-proxy set of each IP family.
  returned: when O(mode=ipvs) and O(dest) is not given
  type: dict
  sample: {KUBE-CLUSTER-IP: ["10.96.0.10,tcp:53"], KUBE-LOOP-BACK: ["10.244.1.5,tcp:53,10.244.1.5"],
           KUBE-NODE-PORT-TCP: ["30080"]}
ipset_types:
  description: Set name -> ipset type, for creating the sets with M(kubeipvs.node.ipset).
  returned: when O(mode=ipvs) and O(dest) is not given
  type: dict
  sample: {KUBE-CLUSTER-IP: "hash:ip,port", KUBE-NODE-PORT-TCP: "bitmap:port"}
cluster_ip_ports:
  description:
    - Every ClusterIP port of the node's Services as C(protocol/address:port) (IPv6 in brackets) - the
      spelling of RV(kubeipvs.node.dataplane_facts#module:dataplane.service_ports), so a mode switch can
      check that the node's new dataplane answers on all of them (give them to
      O(kubeipvs.node.dataplane_facts#module:expect_service_ports)).
  returned: when neither O(nodes) nor O(dest) is given
  type: list
  elements: str
  sample: ["tcp/10.96.0.1:443", "udp/10.96.0.10:53"]
kube_proxy_version:
  description:
    - The kube-proxy release rendered for, as given or read (see O(kube_proxy_version)), without a
      leading C(v).
  returned: success
  type: str
  sample: 1.34.4
kube_proxy_version_source:
  description: Where RV(kube_proxy_version) came from - V(option), V(daemonset) or V(server).
  returned: success
  type: str
  sample: daemonset
node_ips:
  description: The node IPs used for NodePorts.
  returned: when O(nodes) is not given
  type: list
  elements: str
  sample: [192.0.2.11]
counts:
  description:
    - Numbers of Services and EndpointSlices read, and of what the mode's state holds - in V(ipvs) mode
      virtual servers, real servers and addresses; in V(iptables) mode chains and rules (both
      families); in V(nftables) mode lines of table content; in every mode the ClusterIP ports
      (C(cluster_ip_ports)).
  returned: when O(nodes) is not given
  type: dict
  sample: {services_read: 12, endpoint_slices_read: 14, virtual_servers: 20, real_servers: 31, addresses: 12,
           cluster_ip_ports: 12}
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError, ansible_module, run_module
from ansible_collections.kubeipvs.node.plugins.module_utils.k8s._client import (
    AUTH_ARG_SPEC,
    KubeApiError,
    client_from_module,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.node._collector import collector_paused
from ansible_collections.kubeipvs.node.plugins.module_utils.node._state_files import write_state_file
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import family_of
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_catalogue import (
    IPVS_SCHEDULERS,
    PROXY_MODES,
    RENDERED_VERSIONS,
    gate_settings,
    image_tag,
    iptables_sysctls,
    localhost_node_ports,
    node_port_cidrs,
    parse_version,
    rendered_version,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_iptables import iptables_state
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_ipvs_iptables import (
    ipvs_iptables_state,
    without_shared_chains,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_nftables import nftables_state
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_state import (
    ZONE_LABEL,
    Cluster,
    as_cluster,
    check_node_ips,
    node_state,
    parse_ip,
    zone_hinted,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._text import DNS1123_LABEL, DNS1123_SUBDOMAIN


def node_ips_from_api(client, node_name, families):
    node = client.get("Node", node_name)
    if node is None:
        raise KubeIpvsError(f"node {node_name} not found in the cluster; check node_name")
    addresses = internal_ips(node, families)
    if not addresses:
        raise KubeIpvsError(f"node {node_name} reports no InternalIP address{of_families(families)}; pass node_ips")
    return addresses


def node_zones_from_api(client, names):
    """name -> the topology.kubernetes.io/zone label of each node of ``names`` ("" without one, or
    without a Node object), which kube-proxy matches endpoints' zone hints against."""
    try:
        found = [client.get("Node", names[0]) or {}] if len(names) == 1 else client.list("Node")
    except KubeApiError as error:
        if error.status not in (401, 403):
            raise
        raise KubeIpvsError(f"cannot read the Nodes ({error.status} {error.reason}), whose "
                            f"{ZONE_LABEL} labels pick the endpoints of Services with zone hints; "
                            "grant get and list on nodes") from None
    labels = {(node.get("metadata") or {}).get("name"): (node.get("metadata") or {}).get("labels") or {}
              for node in found if isinstance(node, dict)}
    return {name: str((labels.get(name) or {}).get(ZONE_LABEL) or "") for name in names}


def service_cidrs_from_api(client):
    """The CIDRs of every ServiceCIDR object (networking.k8s.io/v1), [] where the API has none."""
    try:
        objects = client.list("ServiceCIDR")
    except KubeApiError as error:
        if error.status == 404:
            return []
        raise KubeIpvsError(f"cannot list ServiceCIDRs ({error.status} {error.reason}); "
                            "grant list on servicecidrs or pass service_cidrs") from None
    return sorted({str(cidr) for obj in objects for cidr in ((obj.get("spec") or {}).get("cidrs") or [])})


def daemonset_tag(client, namespace, name):
    """The image tag of the DaemonSet's ``kube-proxy`` container (else of its first container whose
    tag is a version); None without such a DaemonSet, or one the credentials may not read."""
    try:
        daemonset = client.get("DaemonSet", name, namespace) or {}
    except KubeApiError as error:
        if error.status not in (401, 403):
            raise
        return None
    containers = ((((daemonset.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or [])
    containers = sorted((c for c in containers if isinstance(c, dict)), key=lambda c: c.get("name") != "kube-proxy")
    tags = [image_tag(container.get("image")) for container in containers]
    return next((tag for tag in tags if parse_version(tag)), None)


def kube_proxy_version(client, given, namespace, name, server):
    """``(version text, (major, minor, patch), source)`` of the kube-proxy to render for: ``given``
    (already checked), else the image tag of the DaemonSet ``namespace``/``name``, else ``server``
    (the API server's gitVersion)."""
    found, source = given, "option"
    if not given:
        found, source = daemonset_tag(client, namespace, name), "daemonset"
        if parse_version(found) is None:
            found, source = server, "server"
    parsed = parse_version(found)
    if parsed is None:
        raise KubeIpvsError(f"cannot tell which kube-proxy the cluster runs (the API server reports version {server!r} "
                            f"and there is no {namespace}/{name} DaemonSet with a versioned image); "
                            "pass kube_proxy_version")
    return found.strip().lstrip("v"), parsed, source


def render(params, services, slices, node_ips, service_cidrs=(), version=RENDERED_VERSIONS[-1]):
    """The node's state in the requested mode's terms (as kube-proxy ``version``, a proven
    ``(major, minor)``, writes it - only nftables mode differs between them), plus the
    mode-independent facts. Only the requested mode's state is computed. ``services`` may be a
    ``Cluster`` built once for many nodes (``slices`` is then ignored)."""
    cluster = as_cluster(services, slices)
    mode, node_name = params["mode"], params["node_name"]
    counts = {"services_read": len(cluster.services), "endpoint_slices_read": len(cluster.endpoint_slices)}
    options = {"cluster_cidr": params["cluster_cidr"] or None, "masquerade_bit": params["masquerade_bit"],
               "masquerade_all": params["masquerade_all"], "families": params["ip_families"]}
    result = {"mode": mode, "counts": counts}
    if mode == "ipvs":
        cidrs = node_port_cidrs(params["node_port_cidrs"], node_ips, version)
        ipvs = node_state(cluster, None, node_name, node_ips, params["scheduler"], params["ip_families"],
                          params["node_port_addresses"], node_port_cidrs=cidrs)
        virtual_servers = ipvs["ipvs_sync"]["services"]
        counts.update(virtual_servers=len(virtual_servers),
                      real_servers=sum(len(s["real_servers"]) for s in virtual_servers),
                      addresses=len(ipvs["dummy_interface"]["addresses"]))
        result["cluster_ip_ports"] = ipvs["cluster_ip_ports"]
        counts["cluster_ip_ports"] = len(result["cluster_ip_ports"])
        result.update((key, ipvs[key]) for key in ("dummy_interface", "ipvs_sync", "ipset", "ipsets", "ipset_types"))
        result["iptables_chain"] = ipvs_iptables_state(ipvs["ipsets"], options["cluster_cidr"],
                                                       options["masquerade_bit"], options["masquerade_all"])
        result["iptables_chain_unshared"] = {family: without_shared_chains(chains)
                                             for family, chains in result["iptables_chain"].items()}
        return result
    if mode == "iptables":
        cidrs = node_port_cidrs(params["node_port_cidrs"], node_ips, version)
        localhost = localhost_node_ports(params["localhost_node_ports"], cidrs)
        result["iptables_chain"] = iptables_state(cluster, None, node_name, node_ips, node_port_cidrs=cidrs,
                                                  node_addresses=params["node_port_addresses"],
                                                  localhost_nodeports=localhost, **options)
        result["sysctls"] = iptables_sysctls(list(result["iptables_chain"]), localhost)
        chains = [chain for family_chains in result["iptables_chain"].values() for chain in family_chains]
        counts.update(chains=len(chains), rules=sum(len(chain.get("rules") or []) for chain in chains))
    else:
        # unset, nftables mode's nodePortAddresses is "primary" (the renderer's default)
        cidrs = node_port_cidrs(params["node_port_cidrs"], node_ips, version) if params["node_port_cidrs"] else None
        result["nftables_tables"] = list(nftables_state(cluster, None, node_name, node_ips, service_cidrs=service_cidrs,
                                                        version=version, node_addresses=params["node_port_addresses"],
                                                        node_port_cidrs=cidrs, **options).values())
        counts["table_lines"] = sum(table["content"].count("\n") for table in result["nftables_tables"])
    result["cluster_ip_ports"] = cluster.cluster_ip_ports(node_ips, params["ip_families"])
    counts["cluster_ip_ports"] = len(result["cluster_ip_ports"])
    return result


def internal_ips(node, families=()):
    """The Node's InternalIP addresses; with ``families`` (those its kernel runs kube-proxy for) only
    theirs, as kube-proxy takes its node IPs: a node of a dual-stack cluster whose IPv6 is switched off
    runs IPv4 alone, and its IPv6 InternalIP is nobody's node IP there."""
    addresses = [a.get("address") for a in (node.get("status") or {}).get("addresses") or []
                 if a.get("type") == "InternalIP" and a.get("address")]
    if not families:
        return addresses
    return [address for address in addresses
            if (ip := parse_ip(address)) is None or family_of(ip) in families]


def of_families(families):
    return f" of {' or '.join(sorted(set(families)))}" if families else ""


def check_nodes(nodes, dest):
    """Every entry of ``nodes`` usable, before the cluster is read: named, each name once, good addresses,
    a folder of its own for its files."""
    names, folders = set(), set()
    for index, node in enumerate(nodes):
        DNS1123_SUBDOMAIN.check(node["name"], f"nodes[{index}].name")
        if node["name"] in names:
            raise KubeIpvsError(f"nodes[{index}].name: {node['name']} is listed twice; list each node once")
        names.add(node["name"])
        try:
            check_node_ips(node["node_ips"], f"nodes[{index}].node_ips")
            if node["node_port_addresses"] is not None:
                check_node_ips(node["node_port_addresses"], f"nodes[{index}].node_port_addresses")
        except ValueError as error:
            raise KubeIpvsError(str(error)) from None
        folder = node["dest"] or (os.path.join(dest, node["name"]) if dest is not None else None)
        if folder is None:
            raise KubeIpvsError(f"nodes[{index}]: no folder for its state files; give dest or nodes[{index}].dest")
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise KubeIpvsError(f"nodes[{index}]: {folder} exists and is not a directory; name a directory for "
                                "the state files")
        if os.path.realpath(folder) in folders:
            raise KubeIpvsError(f"nodes[{index}]: {folder} is another node's folder too; give each node its own")
        folders.add(os.path.realpath(folder))


def nodes_ips_from_api(client, nodes, families):
    """name -> node IPs: as given, or the Node objects' InternalIP addresses of the node's families
    (its ``ip_families``, else ``families``; one list for all the nodes)."""
    result = {node["name"]: node["node_ips"] for node in nodes}
    missing = [node for node in nodes if not node["node_ips"]]
    if missing:
        listed = {(n.get("metadata") or {}).get("name"): n for n in client.list("Node")}
        for node in missing:
            name = node["name"]
            if name not in listed:
                raise KubeIpvsError(f"node {name} not found in the cluster; check nodes")
            node_families = families if node["ip_families"] is None else node["ip_families"]
            result[name] = internal_ips(listed[name], node_families)
            if not result[name]:
                raise KubeIpvsError(f"node {name} reports no InternalIP address{of_families(node_families)}; "
                                    "give its node_ips")
    return result


def compute(module):
    params = module.params
    if not 0 <= params["masquerade_bit"] <= 31:
        raise KubeIpvsError(f"masquerade_bit must be 0-31, got {params['masquerade_bit']}")
    if params["node_name"] is not None:
        DNS1123_SUBDOMAIN.check(params["node_name"], "node_name")
    else:
        check_nodes(params["nodes"], params["dest"])
    DNS1123_SUBDOMAIN.check(params["daemonset_name"], "daemonset_name")
    DNS1123_LABEL.check(params["daemonset_namespace"], "daemonset_namespace")
    given = params["kube_proxy_version"]
    if given and parse_version(given) is None:
        raise KubeIpvsError(f"kube_proxy_version {given!r} is not a Kubernetes version; give it as v1.34.4 or 1.34")
    wrong = sorted(name for name, flag in params["feature_gates"].items() if not isinstance(flag, bool))
    if wrong:
        raise KubeIpvsError(f"feature_gates: {', '.join(map(str, wrong))} must be true or false, as in featureGates")
    if params["dest"] is not None and os.path.exists(params["dest"]) and not os.path.isdir(params["dest"]):
        raise KubeIpvsError(f"dest {params['dest']} exists and is not a directory; name a directory for the state files")
    client = client_from_module(module)
    server = str((client.version() or {}).get("gitVersion") or "")
    version, parsed, source = kube_proxy_version(client, given, params["daemonset_namespace"],
                                                 params["daemonset_name"], server)
    versions = dict(kubernetes_version=server, kube_proxy_version=version, kube_proxy_version_source=source)
    rendered = rendered_version(parsed)
    if rendered != parsed[:2]:
        module.warn(f"kube-proxy v{version} ({source}) is outside the releases rendered exactly "
                    f"(v{'.'.join(map(str, RENDERED_VERSIONS[0]))} to v{'.'.join(map(str, RENDERED_VERSIONS[-1]))}); "
                    f"rendering it as v{'.'.join(map(str, rendered))}")
    try:
        node_port_cidrs(params["node_port_cidrs"], [], rendered)
        gates = gate_settings(params["feature_gates"], rendered, params["mode"])
    except ValueError as error:
        raise KubeIpvsError(str(error)) from None
    if params["nodes"] == []:  # the versions alone (a switch's preflight): no list to read
        return dict(versions, changed=False, mode=params["mode"], nodes={})
    if params["nodes"] is None:
        node_ips = {params["node_name"]: params["node_ips"]
                    or node_ips_from_api(client, params["node_name"], params["ip_families"])}
    else:
        node_ips = nodes_ips_from_api(client, params["nodes"], params["ip_families"])
    services = client.list("Service")
    slices = client.list("EndpointSlice")
    service_cidrs = params["service_cidrs"]
    if service_cidrs is None and params["mode"] == "nftables":
        service_cidrs = service_cidrs_from_api(client)
    try:
        cluster = Cluster(services, slices, gates=gates)
        del services, slices  # the cluster holds them; one node's state at a time beside them
        if zone_hinted(cluster.endpoint_slices):
            cluster.zones = node_zones_from_api(client, sorted(node_ips))
        if params["nodes"] is None:
            state = render(params, cluster, None, node_ips[params["node_name"]], service_cidrs or (), rendered)
            state.update(versions, changed=False, node_ips=node_ips[params["node_name"]])
            return state if params["dest"] is None else to_state_files(state, params["dest"])
        result = dict(versions, changed=False, mode=params["mode"], nodes={})
        for node in params["nodes"]:
            name = node["name"]
            node_params = dict(params, node_name=name, node_port_addresses=node["node_port_addresses"])
            if node["ip_families"] is not None:
                node_params["ip_families"] = node["ip_families"]
            state = render(node_params, cluster, None, node_ips[name], service_cidrs or (), rendered)
            state = to_state_files(state, node["dest"] or os.path.join(params["dest"], name))
            result["nodes"][name] = {key: state[key] for key in ("counts", "state_files", "sysctls") if key in state}
            result["nodes"][name]["node_ips"] = node_ips[name]
        return result
    except ValueError as error:
        raise KubeIpvsError(str(error)) from None


def compute_paused(module):
    """The whole run - the lists, the cluster's model, every node's state - with the cyclic garbage
    collector paused (see ``node/_collector.py``): half of a further node's CPU in iptables mode is its passes."""
    with collector_paused():
        return compute(module)


# The node module each result key is the input of (and its state file's name) -> the module's option.
STATE_FILE_OPTIONS = {"dummy_interface": "addresses", "ipset": "sets", "ipvs_sync": "services"}
# Result keys written whole as one option of another node module: key -> (module, option).
STATE_FILE_AS = {"cluster_ip_ports": ("dataplane_facts", "expect_service_ports")}
# Large results that the state files replace.
STATE_FILE_REPLACED = ("dummy_interface", "ipset", "ipvs_sync", "ipsets", "ipset_types", "iptables_chain",
                       "iptables_chain_unshared", "nftables_tables", "cluster_ip_ports")


def to_state_files(state, directory):
    """``state`` with its module inputs written to files in ``directory`` and replaced by their paths."""
    files = {}
    for key, option in STATE_FILE_OPTIONS.items():
        if key in state:
            files[key] = write_state_file(directory, f"{key}.json.gz", {option: state[key][option]})
    for key, (module, option) in STATE_FILE_AS.items():
        if key in state:
            files[module] = write_state_file(directory, f"{module}.json.gz", {option: state[key]})
    for key in ("iptables_chain", "iptables_chain_unshared"):
        if key in state:
            files[key] = {family: write_state_file(directory, f"{key}-{family}.json.gz", {"chains": chains})
                          for family, chains in state[key].items()}
    if "nftables_tables" in state:
        files["nftables_tables"] = [
            {"family": table["family"], "name": table["name"],
             "state_src": write_state_file(directory, f"nftables_table-{table['family']}-{table['name']}.json.gz",
                                           {"content": table["content"]})}
            for table in state["nftables_tables"]]
    result = {key: value for key, value in state.items() if key not in STATE_FILE_REPLACED}
    result["state_files"] = files
    return result


def main():
    argument_spec = dict(
        AUTH_ARG_SPEC,
        node_name=dict(type="str"),
        node_ips=dict(type="list", elements="str", default=[]),
        nodes=dict(type="list", elements="dict", options=dict(
            name=dict(type="str", required=True),
            node_ips=dict(type="list", elements="str", default=[]),
            node_port_addresses=dict(type="list", elements="str"),
            ip_families=dict(type="list", elements="str", choices=["ipv4", "ipv6"]),
            dest=dict(type="path"),
        )),
        scheduler=dict(type="str", default="rr", choices=list(IPVS_SCHEDULERS)),
        mode=dict(type="str", default="ipvs", choices=list(PROXY_MODES)),
        cluster_cidr=dict(type="str", default=""),
        masquerade_bit=dict(type="int", default=14),
        masquerade_all=dict(type="bool", default=False),
        ip_families=dict(type="list", elements="str", choices=["ipv4", "ipv6"], default=[]),
        service_cidrs=dict(type="list", elements="str"),
        node_port_addresses=dict(type="list", elements="str"),
        node_port_cidrs=dict(type="list", elements="str", default=[]),
        localhost_node_ports=dict(type="bool", default=True),
        feature_gates=dict(type="dict", default={}),
        kube_proxy_version=dict(type="str"),
        daemonset_name=dict(type="str", default="kube-proxy"),
        daemonset_namespace=dict(type="str", default="kube-system"),
        dest=dict(type="path"),
    )
    module = ansible_module(AnsibleModule, argument_spec=argument_spec, supports_check_mode=True,
                            required_one_of=[("node_name", "nodes")],
                            mutually_exclusive=[("node_name", "nodes"), ("node_ips", "nodes"),
                                                ("node_port_addresses", "nodes")])
    run_module(module, compute_paused)


if __name__ == "__main__":
    main()
