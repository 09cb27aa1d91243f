# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Classification, mode inference and cleanup plans of kube-proxy's dataplane objects."""

from __future__ import annotations

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils.pure import _dataplane as dp
from ansible_collections.kubeipvs.node.plugins.module_utils.pure import _iptables as iptables_lib


@pytest.mark.parametrize(
    ("table", "chain", "owner"),
    [
        ("nat", "KUBE-SVC-ABCDEFGHIJKLMNOP", "iptables"),
        ("nat", "KUBE-SEP-ABCDEFGHIJKLMNOP", "iptables"),
        ("nat", "KUBE-EXT-ABCDEFGHIJKLMNOP", "iptables"),
        ("nat", "KUBE-FW-ABCDEFGHIJKLMNOP", "iptables"),
        ("nat", "KUBE-SVL-ABCDEFGHIJKLMNOP", "iptables"),
        ("nat", "KUBE-XLB-ABCDEFGHIJKLMNOP", "iptables"),
        ("nat", "KUBE-NODEPORTS", "iptables"),
        ("filter", "KUBE-SERVICES", "iptables"),
        ("filter", "KUBE-EXTERNAL-SERVICES", "iptables"),
        ("mangle", "KUBE-PROXY-CANARY", "iptables"),
        ("nat", "KUBE-SERVICES", "shared"),
        ("nat", "KUBE-POSTROUTING", "shared"),
        ("nat", "KUBE-MARK-MASQ", "shared"),
        ("nat", "KUBE-FIREWALL", "shared"),
        ("filter", "KUBE-FORWARD", "shared"),
        ("filter", "KUBE-PROXY-FIREWALL", "shared"),
        ("nat", "KUBE-NODE-PORT", "ipvs"),
        ("nat", "KUBE-LOAD-BALANCER", "ipvs"),
        ("filter", "KUBE-IPVS-FILTER", "ipvs"),
        ("filter", "KUBE-SOURCE-RANGES-FIREWALL", "ipvs"),
        ("filter", "KUBE-FIREWALL", "kubelet"),
        ("nat", "KUBE-KUBELET-CANARY", "kubelet"),
        ("mangle", "KUBE-KUBELET-CANARY", "kubelet"),
        ("filter", "KUBE-SVC-ABCDEFGHIJKLMNOP", "unknown-kube"),  # service chains live in nat only
        ("nat", "KUBE-SOMETHING-NEW", "unknown-kube"),
        ("nat", "FOREIGN-CHAIN", "foreign"),
        ("filter", "DOCKER-USER", "foreign"),
    ],
)
def test_classify_chain(table, chain, owner):
    assert dp.classify_chain(table, chain) == owner


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("KUBE-CLUSTER-IP", ("ipvs", "ipv4")),
        ("KUBE-6-CLUSTER-IP", ("ipvs", "ipv6")),
        ("KUBE-6-LOAD-BALANCER-SOURCE-CID", ("ipvs", "ipv6")),  # cut to 31 characters like kube-proxy
        ("KUBE-NODE-PORT-SCTP", ("ipvs", "ipv4")),  # legacy name
        ("KUBE-6-NODE-PORT-LOCAL-SCTP", ("ipvs", "ipv6")),
        ("KUBE-MY-OWN", ("unknown-kube", "ipv4")),
        ("FOREIGN-SET", ("foreign", None)),
    ],
)
def test_classify_set(name, expected):
    assert dp.classify_set(name) == expected


def test_ipv6_set_names_fit_ipset_limit():
    assert all(len(name) <= 31 for name in dp.ipvs_set_names("ipv6"))
    assert "KUBE-6-LOAD-BALANCER-SOURCE-CID" in dp.ipvs_set_names("ipv6")


def _table(text, table):
    return iptables_lib.parse_save(f"*{table}\n{text}\nCOMMIT\n", table)


IPTABLES_NAT = """:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-SVC-AAAA - [0:0]
:KUBE-SEP-BBBB - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:FOREIGN-CHAIN - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A POSTROUTING -j FOREIGN-CHAIN
-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 443 -j KUBE-SVC-AAAA
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-SVC-AAAA -j KUBE-SEP-BBBB
-A KUBE-SEP-BBBB -s 10.0.0.5/32 -j KUBE-MARK-MASQ
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A FOREIGN-CHAIN -d 192.0.2.0/24 -j RETURN"""

IPVS_NAT = """:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-LOAD-BALANCER - [0:0]
:FOREIGN-CHAIN - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A POSTROUTING -j FOREIGN-CHAIN
-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT
-A KUBE-POSTROUTING -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE
-A KUBE-NODE-PORT -p tcp -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ
-A FOREIGN-CHAIN -m set --match-set FOREIGN-SET dst -j RETURN"""

KUBELET_FILTER = """:KUBE-FIREWALL - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
-A INPUT -j KUBE-FIREWALL
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -j DROP"""


def node_with(nat=None, filter_=None, sets=(), services=(), nft=(), dummy=None, family="ipv4"):
    node = dp.NodeState()
    state = node.families[family]
    if nat is not None:
        state.tables[("nft", "nat")] = _table(nat, "nat")
    if filter_ is not None:
        state.tables[("nft", "filter")] = _table(filter_, "filter")
    for each in node.families.values():
        each.sets = list(sets)
    state.ipvs_services = list(services)
    for nft_family in nft:
        node.families[nft_family].nft_table = True
    node.dummy_link = dummy
    return node


@pytest.mark.parametrize(
    ("node", "mode", "modes"),
    [
        (node_with(), "none", []),
        (node_with(nat=IPTABLES_NAT), "iptables", ["iptables"]),
        (node_with(nat=IPVS_NAT, sets=["KUBE-CLUSTER-IP"]), "ipvs", ["ipvs"]),
        (node_with(dummy="kube-ipvs0"), "ipvs", ["ipvs"]),
        (node_with(services=["tcp/10.96.0.1:443"]), "ipvs", ["ipvs"]),
        (node_with(nft=["ipv4"]), "nftables", ["nftables"]),
        (node_with(nft=["ipv6"]), "nftables", ["nftables"]),
        (node_with(nat=IPTABLES_NAT, nft=["ipv4"]), "mixed", ["iptables", "nftables"]),
        (node_with(nat=IPTABLES_NAT + "\n" + IPVS_NAT.split("\n", 5)[5], sets=["KUBE-CLUSTER-IP"]), "mixed",
         ["iptables", "ipvs"]),
        # Shared chains alone (the node role's masquerade baseline) prove no mode; kubelet's neither.
        (node_with(nat=":KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]", filter_=KUBELET_FILTER), "none", []),
        # Foreign KUBE-looking sets and foreign chains prove nothing either.
        (node_with(nat=":FOREIGN-CHAIN - [0:0]", sets=["FOREIGN-SET", "KUBE-MY-OWN"]), "none", []),
    ],
)
def test_infer_mode(node, mode, modes):
    found_mode, found_modes, evidence = dp.infer_mode(node)
    assert (found_mode, found_modes) == (mode, modes)
    assert [name for name in dp.MODES if evidence[name]] == modes


def test_ipv6_sets_count_only_for_the_ipv6_family():
    node = node_with(sets=["KUBE-6-CLUSTER-IP"])
    assert dp.infer_mode(node, families=("ipv4",))[0] == "none"
    assert dp.infer_mode(node, families=("ipv6",))[0] == "ipvs"


def _lines(plan):
    return "".join(table.render() for table in plan.tables).splitlines()


def test_iptables_cleanup_order_jumps_then_flush_then_delete():
    plan = dp.plan_cleanup("iptables", node_with(nat=IPTABLES_NAT, filter_=KUBELET_FILTER))
    lines = _lines(plan)
    assert lines == [
        "*nat",
        '-D PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-D OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-D POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        ":KUBE-SERVICES - [0:0]",
        ":KUBE-NODEPORTS - [0:0]",
        ":KUBE-SVC-AAAA - [0:0]",
        ":KUBE-SEP-BBBB - [0:0]",
        ":KUBE-POSTROUTING - [0:0]",
        ":KUBE-MARK-MASQ - [0:0]",
        "-X KUBE-SERVICES",
        "-X KUBE-NODEPORTS",
        "-X KUBE-SVC-AAAA",
        "-X KUBE-SEP-BBBB",
        "-X KUBE-POSTROUTING",
        "-X KUBE-MARK-MASQ",
        "COMMIT",
    ]
    assert plan.sets == [] and plan.ipvs_services == [] and plan.links == []


def test_cleanup_plans_never_touch_kubelet_or_foreign_objects():
    node = node_with(nat=IPTABLES_NAT, filter_=KUBELET_FILTER, sets=["FOREIGN-SET", "KUBE-CLUSTER-IP"],
                     services=["tcp/10.96.0.1:443"], nft=["ipv4"], dummy="kube-ipvs0")
    untouchable = ("KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "FOREIGN-CHAIN", "FOREIGN-SET")
    for mode in dp.MODES:
        plan = dp.plan_cleanup(mode, node)
        text = "\n".join(_lines(plan)) + repr(plan.summary())
        for name in untouchable:
            assert name not in text, (mode, name)


def test_iptables_cleanup_keeps_shared_chains_while_ipvs_is_live():
    wanted = ("-A KUBE-SERVICES -m set", ":KUBE-NODE-PORT", "-A KUBE-NODE-PORT")
    ipvs_lines = [line for line in IPVS_NAT.splitlines() if line.startswith(wanted)]
    nat = IPTABLES_NAT + "\n" + "\n".join(ipvs_lines)
    node = node_with(nat=nat, sets=["KUBE-CLUSTER-IP", "KUBE-NODE-PORT-TCP"], dummy="kube-ipvs0")
    plan = dp.plan_cleanup("iptables", node)
    nat_plan = plan.tables[0]
    assert nat_plan.chains == ["KUBE-NODEPORTS", "KUBE-SVC-AAAA", "KUBE-SEP-BBBB"]
    assert sorted(plan.kept_shared) == ["nft/ipv4/nat/KUBE-MARK-MASQ", "nft/ipv4/nat/KUBE-POSTROUTING",
                                        "nft/ipv4/nat/KUBE-SERVICES"]
    # The kept KUBE-SERVICES loses its jumps to removed chains, and only those.
    assert [(chain, " ".join(tokens)) for chain, tokens in nat_plan.rule_deletes] == [
        ("KUBE-SERVICES", "-d 10.96.0.1/32 -p tcp -m tcp --dport 443 -j KUBE-SVC-AAAA"),
        ("KUBE-SERVICES", "-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"),
    ]


def test_ipvs_cleanup_removes_rules_before_sets_and_keeps_foreign_set_and_service_labels():
    node = node_with(nat=IPVS_NAT, sets=["KUBE-CLUSTER-IP", "KUBE-LOOP-BACK", "KUBE-NODE-PORT-TCP", "FOREIGN-SET",
                                         "KUBE-6-CLUSTER-IP", "KUBE-MY-OWN"],
                     services=["tcp/10.96.0.1:443"], dummy="kube-ipvs0")
    plan = dp.plan_cleanup("ipvs", node)
    assert plan.tables[0].chains == ["KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-MARK-MASQ", "KUBE-NODE-PORT",
                                     "KUBE-LOAD-BALANCER"]
    # Sets go in a later step than the rules; only kube-proxy's names of the families asked for.
    assert plan.sets == ["KUBE-CLUSTER-IP", "KUBE-LOOP-BACK", "KUBE-NODE-PORT-TCP", "KUBE-6-CLUSTER-IP"]
    assert plan.ipvs_services == ["tcp/10.96.0.1:443"]
    assert plan.links == ["kube-ipvs0"]
    assert dp.plan_cleanup("ipvs", node, families=("ipv4",)).sets == ["KUBE-CLUSTER-IP", "KUBE-LOOP-BACK",
                                                                      "KUBE-NODE-PORT-TCP"]


def test_ipvs_cleanup_while_iptables_is_live_deletes_set_rules_from_kept_chains():
    nat = IPTABLES_NAT + "\n-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT"
    plan = dp.plan_cleanup("ipvs", node_with(nat=nat, sets=["KUBE-CLUSTER-IP"]))
    assert plan.tables[0].chains == []
    assert [(chain, " ".join(tokens)) for chain, tokens in plan.tables[0].rule_deletes] == [
        ("KUBE-SERVICES", "-m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT")]
    assert plan.sets == ["KUBE-CLUSTER-IP"]


@pytest.mark.parametrize(
    ("mode", "extra", "needle"),
    [
        ("iptables", "-A FOREIGN-CHAIN -j KUBE-SVC-AAAA", "-A FOREIGN-CHAIN -j KUBE-SVC-AAAA"),
        ("ipvs", "-A FOREIGN-CHAIN -m set --match-set KUBE-CLUSTER-IP dst -j RETURN", "KUBE-CLUSTER-IP"),
    ],
)
def test_foreign_rules_using_doomed_objects_stop_the_plan(mode, extra, needle):
    node = node_with(nat=IPTABLES_NAT + "\n" + extra, sets=["KUBE-CLUSTER-IP"])
    with pytest.raises(dp.ForeignReference) as raised:
        dp.plan_cleanup(mode, node)
    assert any(needle in reference for reference in raised.value.references)


def test_nftables_cleanup_lists_tables_per_family():
    node = node_with(nat=IPTABLES_NAT, nft=["ipv4", "ipv6"])
    assert dp.plan_cleanup("nftables", node).nft_tables == [("ip", "kube-proxy"), ("ip6", "kube-proxy")]
    assert dp.plan_cleanup("nftables", node, families=("ipv6",)).nft_tables == [("ip6", "kube-proxy")]
    assert _lines(dp.plan_cleanup("nftables", node)) == []


def test_second_plan_after_apply_is_empty():
    node = node_with(nat=IPTABLES_NAT)
    plan = dp.plan_cleanup("iptables", node)
    assert plan.changed
    after = node_with(nat=":FOREIGN-CHAIN - [0:0]\n-A POSTROUTING -j FOREIGN-CHAIN\n:KUBE-KUBELET-CANARY - [0:0]")
    assert not dp.plan_cleanup("iptables", after).changed


def test_diff_names_before_and_after():
    node = node_with(nat=IPTABLES_NAT, nft=["ipv4"])
    before = dp.objects_of("iptables", node)
    gone = dp.removed_names(dp.plan_cleanup("iptables", node))
    assert "chain nft/ipv4/nat/KUBE-SVC-AAAA" in before
    assert [name for name in before if name not in gone] == []
    assert dp.objects_of("nftables", node) == ["nft table ip kube-proxy"]


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError):
        dp.plan_cleanup("userspace", dp.NodeState())


# --------------------------------------------------------------------------------- service ports

NAT_SERVICES = """*nat
:KUBE-SERVICES - [0:0]
:KUBE-SVC-TCOU7JCQXEZGVUNU - [0:0]
:KUBE-SVL-AAAAAAAAAAAAAAAA - [0:0]
-A KUBE-SERVICES -d 10.96.0.10/32 -p udp -m comment --comment "dns" -m udp --dport 53 -j KUBE-SVC-TCOU7JCQXEZGVUNU
-A KUBE-SERVICES -d 10.96.0.50/32 -p tcp -m comment --comment "canary" -m tcp --dport 80 -j KUBE-SVL-AAAAAAAAAAAAAAAA
-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT
-A KUBE-SERVICES -d 10.96.0.99/32 -p tcp -m comment --comment "x has no endpoints" -m tcp --dport 81 -j REJECT
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
COMMIT
"""


def test_iptables_service_ports_reads_the_dispatch_rules_only():
    family_state = dp.FamilyState("ipv4")
    family_state.tables[("nft", "nat")] = iptables_lib.parse_save(NAT_SERVICES, "nat")
    assert dp.iptables_service_ports(family_state) == ["tcp/10.96.0.50:80", "udp/10.96.0.10:53"]


FILTER_SERVICES = """*filter
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
-A KUBE-SERVICES -d 10.96.0.90/32 -p sctp -m comment --comment "default/sctp has no endpoints" -m sctp --dport 9000 \
-j REJECT --reject-with icmp-port-unreachable
-A KUBE-SERVICES -d 10.96.0.91/32 -p tcp -m comment --comment "not a reject" -m tcp --dport 80 -j ACCEPT
-A KUBE-SERVICES -d 10.96.0.92/32 -p udp -m comment --comment "default/local has no local endpoints" -m udp --dport 53 -j DROP
-A KUBE-EXTERNAL-SERVICES -d 198.51.100.20/32 -p tcp -m tcp --dport 80 -j REJECT
COMMIT
"""


def test_iptables_service_ports_count_the_rejects_of_services_without_endpoints():
    """A Service without endpoints has no nat dispatch rule; iptables mode rejects its ClusterIP
    ports in filter KUBE-SERVICES - handled, as kube-proxy handles them (external IPs are not ClusterIPs)."""
    family_state = dp.FamilyState("ipv4")
    family_state.tables[("nft", "nat")] = iptables_lib.parse_save(NAT_SERVICES, "nat")
    family_state.tables[("nft", "filter")] = iptables_lib.parse_save(FILTER_SERVICES, "filter")
    assert dp.iptables_service_ports(family_state) == ["sctp/10.96.0.90:9000", "tcp/10.96.0.50:80",
                                                       "udp/10.96.0.10:53", "udp/10.96.0.92:53"]


def test_iptables_service_ports_ipv6_labels_bracket_the_address():
    text = ("*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -d fd00::10/128 -p tcp -m tcp --dport 443 "
            "-j KUBE-SVC-BBBBBBBBBBBBBBBB\nCOMMIT\n")
    family_state = dp.FamilyState("ipv6")
    family_state.tables[("legacy", "nat")] = iptables_lib.parse_save(text, "nat")
    assert dp.iptables_service_ports(family_state) == ["tcp/[fd00::10]:443"]


def test_nftables_service_ports_plain_and_commented_elements():
    document = {"nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"map": {"family": "ip", "name": "service-ips", "table": "kube-proxy", "map": "verdict", "elem": [
            [{"concat": ["10.96.0.10", "udp", 53]}, {"goto": {"target": "service-X"}}],
            [{"elem": {"val": {"concat": ["10.96.0.1", "tcp", 443]}, "comment": "default/kubernetes"}},
             {"goto": {"target": "service-Y"}}],
        ]}},
    ]}
    assert dp.nftables_service_ports(document) == ["tcp/10.96.0.1:443", "udp/10.96.0.10:53"]
    assert dp.nftables_service_ports({"nftables": [{"map": {"name": "service-ips"}}]}) == []


def test_service_ports_per_mode_leave_fwmark_services_out():
    node = dp.NodeState()
    node.families["ipv4"].ipvs_services = ["tcp/10.96.0.1:443", "fwmark/inet/7"]
    node.families["ipv4"].nft_service_ports = ["udp/10.96.0.10:53"]
    node.families["ipv6"].ipvs_services = ["tcp/[fd00::1]:443"]
    node.families["ipv4"].tables[("nft", "nat")] = iptables_lib.parse_save(NAT_SERVICES, "nat")
    assert dp.service_ports(node) == {
        "iptables": ["tcp/10.96.0.50:80", "udp/10.96.0.10:53"],
        "ipvs": ["tcp/10.96.0.1:443", "tcp/[fd00::1]:443"],
        "nftables": ["udp/10.96.0.10:53"],
    }
    assert dp.service_ports(node, families=("ipv6",))["ipvs"] == ["tcp/[fd00::1]:443"]
