# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filters that hand the roles kube-proxy's object lists as module-ready inputs, from the
collection's one catalogue (module_utils ``_kube_proxy_catalogue`` and the IPVS-mode renderer), so
no role lists or reshapes kube-proxy's sets and chains itself. Documentation: the .yml files beside
this one."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import FAMILIES
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_catalogue import (
    IPSET_HASHSIZE,
    IPSET_MAXELEM,
    IPSET_PORT_RANGE,
    IPSET_TYPES,
    ipset_name,
    ipset_spec,
    ipvs_sysctls,
    parse_version,
    proxier_families,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_ipvs_iptables import baseline_chains


def _families(value, what):
    families = [value] if isinstance(value, str) else list(value or [])
    unknown = [family for family in families if family not in FAMILIES]
    if unknown or not families:
        raise AnsibleFilterError(f"{what}: expected {' and/or '.join(FAMILIES)}, got {value!r}")
    return families


def ipvs_mode_ipsets(families, hashsize=IPSET_HASHSIZE, maxelem=IPSET_MAXELEM, port_range=IPSET_PORT_RANGE):
    """Every set kube-proxy's IPVS mode creates in each family, as ``kubeipvs.node.ipset`` ``sets``
    entries without members (the members stay kube-proxy's)."""
    families = list(dict.fromkeys(_families(families, "ipvs_mode_ipsets")))
    return [ipset_spec(name, family, hashsize=hashsize, maxelem=maxelem, port_range=port_range)
            for family in families for name in IPSET_TYPES]


def _members_counts(ipsets):
    """Set name -> member count, from the ``sets`` result of a ``kubeipvs.node.ipset`` task or from
    the text ``ipset list -terse`` prints."""
    if isinstance(ipsets, str):
        counts, name = {}, None
        for line in ipsets.splitlines():
            key, _sep, value = line.partition(":")
            if key == "Name":
                name = value.strip()
            elif key == "Number of entries" and name is not None:
                if not value.strip().isdigit():
                    raise AnsibleFilterError(f"ipvs_mode_chains: set {name}: 'Number of entries' is not a count: "
                                             f"{value.strip()!r}")
                counts[name] = int(value.strip())
        return counts
    counts = {}
    for result in ipsets or ():
        if not isinstance(result, dict) or "name" not in result:
            raise AnsibleFilterError("ipvs_mode_chains: ipsets must be the 'sets' result of a kubeipvs.node.ipset "
                                     f"task (dicts with name and members_count) or 'ipset list -terse' output, "
                                     f"got {result!r}")
        counts[result["name"]] = int(result.get("members_count") or 0)
    return counts


def ipvs_mode_chains(family, masquerade_bit=14, ipsets=()):
    """IPVS mode's baseline chains of one family as ``kubeipvs.node.iptables_chain`` ``chains``
    entries. ``ipsets``: the node's sets - the ``sets`` result of a ``kubeipvs.node.ipset`` task (name
    and members_count per set) or the output of ``ipset list -terse`` - from which the hairpin rule
    follows the KUBE-LOOP-BACK set as kube-proxy's does."""
    if family not in FAMILIES:
        raise AnsibleFilterError(f"ipvs_mode_chains: expected one family, {' or '.join(FAMILIES)}, got {family!r}")
    members = _members_counts(ipsets).get(ipset_name("KUBE-LOOP-BACK", family), 0)
    try:
        return baseline_chains(family, int(masquerade_bit), members)
    except ValueError as exc:
        raise AnsibleFilterError(f"ipvs_mode_chains: {exc}") from exc


def ipvs_mode_sysctls(kernel_release, strict_arp=False):
    """The sysctls kube-proxy's IPVS mode sets on a node with this kernel, as
    ``kubeipvs.node.sysctl`` ``settings``."""
    if not isinstance(strict_arp, bool):
        raise AnsibleFilterError(f"ipvs_mode_sysctls: strict_arp must be true or false, got {strict_arp!r}")
    try:
        return ipvs_sysctls(str(kernel_release), strict_arp)
    except ValueError as error:
        raise AnsibleFilterError(f"ipvs_mode_sysctls: {error}") from error


def kube_proxy_ip_families(ipv6, version):
    """The IP families kube-proxy ``version`` (v1.37.2, 1.37) runs a proxier for on a node whose
    dataplane_facts read ``ipv6`` - the node's ``ip_families`` for ``kubeipvs.node.kube_proxy_state``."""
    parsed = parse_version(version)
    if parsed is None:
        raise AnsibleFilterError(f"kube_proxy_ip_families: version {version!r} is not a Kubernetes version; "
                                 "give kube-proxy's, as v1.37.2 or 1.37")
    try:
        return proxier_families(ipv6, parsed)
    except ValueError as error:
        raise AnsibleFilterError(f"kube_proxy_ip_families: {error}") from error


class FilterModule:
    def filters(self):
        return {"ipvs_mode_ipsets": ipvs_mode_ipsets, "ipvs_mode_chains": ipvs_mode_chains,
                "ipvs_mode_sysctls": ipvs_mode_sysctls, "kube_proxy_ip_families": kube_proxy_ip_families}
