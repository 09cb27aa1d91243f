# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The filters the ipvs_node role takes kube-proxy's sets and chains from: the catalogue's lists as
module inputs, and the hairpin rule following the KUBE-LOOP-BACK set as kube-proxy's does."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.kubeipvs.node.plugins.filter.kube_proxy import (
    FilterModule,
    ipvs_mode_chains,
    ipvs_mode_ipsets,
    ipvs_mode_sysctls,
    kube_proxy_ip_families,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_catalogue import (
    IPSET_TYPES,
    IPVS_JUMPS,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_ipvs_iptables import ipvs_iptables_chains

HAIRPIN = ('-m comment --comment "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose" '
           "-m set --match-set {} dst,dst,src -j MASQUERADE")
POSTROUTING = ["-m mark ! --mark 0x4000/0x4000 -j RETURN", "-j MARK --xor-mark 0x4000",
               '-m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully']


def by_chain(entries):
    return {(entry["table"], entry["chain"]): entry for entry in entries}


def test_the_filters_are_registered():
    assert set(FilterModule().filters()) == {"ipvs_mode_ipsets", "ipvs_mode_chains", "ipvs_mode_sysctls",
                                             "kube_proxy_ip_families"}


def test_ipsets_of_both_families_in_kube_proxy_order_without_members():
    specs = ipvs_mode_ipsets(["ipv4", "ipv6"])
    assert [spec["name"] for spec in specs[:17]] == list(IPSET_TYPES)
    assert len(specs) == 34 and all("members" not in spec for spec in specs)
    v6 = {spec["name"]: spec for spec in specs[17:]}
    assert v6["KUBE-6-LOAD-BALANCER-SOURCE-CID"] == {
        "name": "KUBE-6-LOAD-BALANCER-SOURCE-CID", "type": "hash:ip,port,net", "family": "inet6",
        "hashsize": 1024, "maxelem": 65536, "range": None}
    assert v6["KUBE-6-NODE-PORT-TCP"] == {"name": "KUBE-6-NODE-PORT-TCP", "type": "bitmap:port", "family": "inet6",
                                          "hashsize": None, "maxelem": None, "range": "0-65535"}


def test_ipsets_take_the_sizes_and_one_family_as_a_string():
    specs = ipvs_mode_ipsets("ipv4", hashsize=4096, maxelem=262144, port_range="30000-32767")
    assert len(specs) == 17
    assert {(s["hashsize"], s["maxelem"]) for s in specs if s["type"].startswith("hash:")} == {(4096, 262144)}
    assert {s["range"] for s in specs if s["type"] == "bitmap:port"} == {"30000-32767"}


@pytest.mark.parametrize("families", [[], ["ipv4", "inet6"], "IPv4", None])
def test_ipsets_refuse_unknown_families(families):
    with pytest.raises(AnsibleFilterError, match="ipvs_mode_ipsets: expected ipv4 and/or ipv6"):
        ipvs_mode_ipsets(families)


def test_chains_without_hairpin_members_leave_the_hairpin_rule_out():
    entries = by_chain(ipvs_mode_chains("ipv4", ipsets=[{"name": "KUBE-LOOP-BACK", "members_count": 0}]))
    assert entries[("nat", "KUBE-POSTROUTING")]["rules"] == POSTROUTING
    assert entries[("nat", "KUBE-MARK-MASQ")]["rules"] == ["-j MARK --or-mark 0x4000"]


def test_chains_follow_the_family_s_own_loop_back_set():
    sets = [{"name": "KUBE-LOOP-BACK", "members_count": 0}, {"name": "KUBE-6-LOOP-BACK", "members_count": 3}]
    v4 = by_chain(ipvs_mode_chains("ipv4", ipsets=sets))[("nat", "KUBE-POSTROUTING")]["rules"]
    v6 = by_chain(ipvs_mode_chains("ipv6", masquerade_bit=15, ipsets=sets))[("nat", "KUBE-POSTROUTING")]["rules"]
    assert v4 == POSTROUTING
    assert v6 == [HAIRPIN.format("KUBE-6-LOOP-BACK")] + [rule.replace("0x4000", "0x8000") for rule in POSTROUTING]


@pytest.mark.parametrize("members", [0, 5])
def test_the_owned_chains_are_the_renderer_s_own(members):
    """The baseline's two owned chains are exactly what the parity-tested renderer writes for a node
    whose KUBE-LOOP-BACK holds the same number of members."""
    rendered = by_chain(ipvs_iptables_chains({"KUBE-LOOP-BACK": ["x"] * members}, "ipv4"))
    baseline = by_chain(ipvs_mode_chains("ipv4", ipsets=[{"name": "KUBE-LOOP-BACK", "members_count": members}]))
    for key in (("nat", "KUBE-MARK-MASQ"), ("nat", "KUBE-POSTROUTING")):
        assert baseline[key] == rendered[key]


def test_every_other_chain_comes_with_its_jumps_only():
    entries = ipvs_mode_chains("ipv6")
    assert [(e["table"], e["chain"]) for e in entries[:2]] == [("nat", "KUBE-MARK-MASQ"), ("nat", "KUBE-POSTROUTING")]
    others = entries[2:]
    assert all("rules" not in entry and entry["jumps"] for entry in others)
    jumps = [(e["table"], e["chain"], j["chain"], j["comment"]) for e in entries for j in e["jumps"]]
    assert sorted(jumps) == sorted(jump[:4] for jump in IPVS_JUMPS)
    assert all(j["position"] == "first" for e in entries for j in e["jumps"])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"masquerade_bit": 32}, "masquerade_bit must be 0-31"),
    ({"ipsets": ["KUBE-LOOP-BACK"]}, "must be the 'sets' result of a kubeipvs.node.ipset task"),
])
def test_chains_refuse_bad_input(kwargs, message):
    with pytest.raises(AnsibleFilterError, match=message):
        ipvs_mode_chains("ipv4", **kwargs)


def test_chains_take_one_family():
    with pytest.raises(AnsibleFilterError, match="ipvs_mode_chains: expected one family, ipv4 or ipv6"):
        ipvs_mode_chains(["ipv4", "ipv6"])


TERSE = """Name: KUBE-LOOP-BACK
Type: hash:ip,port,ip
Revision: 6
Header: family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0xe7974cd9
Size in memory: 264
References: 0
Number of entries: 1

Name: KUBE-6-LOOP-BACK
Type: hash:ip,port,ip
Revision: 6
Header: family inet6 hashsize 1024 maxelem 65536 bucketsize 12 initval 0xeea3781f
Size in memory: 232
References: 0
Number of entries: 0
"""


def test_chains_read_the_member_counts_from_ipset_list_terse():
    """Where the role does not manage the sets it reads them with ``ipset list -terse``."""
    v4 = by_chain(ipvs_mode_chains("ipv4", ipsets=TERSE))[("nat", "KUBE-POSTROUTING")]["rules"]
    v6 = by_chain(ipvs_mode_chains("ipv6", ipsets=TERSE))[("nat", "KUBE-POSTROUTING")]["rules"]
    assert v4 == [HAIRPIN.format("KUBE-LOOP-BACK")] + POSTROUTING
    assert v6 == POSTROUTING
    assert by_chain(ipvs_mode_chains("ipv4", ipsets=""))[("nat", "KUBE-POSTROUTING")]["rules"] == POSTROUTING


def test_chains_refuse_a_count_ipset_did_not_print():
    with pytest.raises(AnsibleFilterError, match="set KUBE-LOOP-BACK: 'Number of entries' is not a count"):
        ipvs_mode_chains("ipv4", ipsets="Name: KUBE-LOOP-BACK\nNumber of entries: 1\n2\n".replace("1\n2", "1;2"))


IPVS_ALWAYS = {"net.ipv4.vs.conntrack": 1, "net.ipv4.vs.expire_nodest_conn": 1,
               "net.ipv4.vs.expire_quiescent_template": 1, "net.ipv4.ip_forward": 1}


@pytest.mark.parametrize(("release", "conn_reuse"), [
    ("6.1.0-28-amd64", False), ("5.9.0", False), ("5.8.18-100.fc31.x86_64", True), ("4.1.0", True),
    ("4.19.0-27-cloud-amd64", True), ("4.0.9", False), ("3.10.0-1160.el7.x86_64", False), ("10.2.0", False)])
def test_sysctls_of_ipvs_mode_follow_the_kernel_as_kube_proxy_does(release, conn_reuse):
    assert ipvs_mode_sysctls(release) == {**IPVS_ALWAYS, **({"net.ipv4.vs.conn_reuse_mode": 0} if conn_reuse else {})}


def test_sysctls_of_ipvs_mode_with_strict_arp_in_kube_proxy_order():
    settings = ipvs_mode_sysctls("6.1.0", strict_arp=True)
    assert list(settings) == [*IPVS_ALWAYS, "net.ipv4.conf.all.arp_ignore", "net.ipv4.conf.all.arp_announce"]
    assert settings["net.ipv4.conf.all.arp_announce"] == 2


@pytest.mark.parametrize(("release", "strict_arp", "message"), [
    ("", False, "kernel release ''"), ("linux-6.1", False, "expected MAJOR.MINOR"),
    (None, False, "kernel release 'None'"), ("6.1.0", "yes", "strict_arp must be true or false")])
def test_sysctls_of_ipvs_mode_refuse_what_is_not_a_kernel_release(release, strict_arp, message):
    with pytest.raises(AnsibleFilterError, match=f"ipvs_mode_sysctls: .*{message}"):
        ipvs_mode_sysctls(release, strict_arp=strict_arp)


@pytest.mark.parametrize(("kernel", "disabled", "version", "expected"), [
    (True, False, "v1.37.2", ["ipv4", "ipv6"]),   # IPv6 on: both, in an IPv4-only cluster too
    (True, None, "1.36", ["ipv4", "ipv6"]),       # the switch not readable: taken as on
    (True, True, "v1.36.3", ["ipv4"]),            # switched off: IPv4 alone from v1.36 ...
    (True, True, "1.37.2-eks-1-37-20261101", ["ipv4"]),
    (True, True, "v1.35.4", ["ipv4", "ipv6"]),    # ... older releases test /proc/net/if_inet6 alone
    (True, True, "v1.34.0", ["ipv4", "ipv6"]),
    (False, None, "v1.37.2", ["ipv4"]),           # no IPv6 in the kernel
    (False, False, "v1.34.4", ["ipv4"]),
])
def test_ip_families_follow_the_kernel_and_the_release(kernel, disabled, version, expected):
    assert kube_proxy_ip_families({"kernel": kernel, "disabled": disabled}, version) == expected


@pytest.mark.parametrize(("ipv6", "version", "message"), [
    ({"kernel": True, "disabled": False}, "latest", "version 'latest' is not a Kubernetes version"),
    ({"kernel": True, "disabled": False}, None, "version None is not a Kubernetes version"),
    ({"kernel": "yes", "disabled": False}, "1.37", "ipv6: expected dataplane_facts' ipv6"),
    ({"kernel": True, "disabled": "0"}, "1.37", "ipv6: expected dataplane_facts' ipv6"),
    ({"kernel": True}, "1.37", "ipv6: expected dataplane_facts' ipv6"),
    ([True, False], "1.37", "ipv6: expected dataplane_facts' ipv6"),
])
def test_ip_families_refuse_what_is_not_facts_and_a_release(ipv6, version, message):
    with pytest.raises(AnsibleFilterError, match=f"kube_proxy_ip_families: {message}"):
        kube_proxy_ip_families(ipv6, version)
