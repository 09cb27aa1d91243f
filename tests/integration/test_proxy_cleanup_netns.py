# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""kubeipvs.node.proxy_cleanup and dataplane_facts against the host kernel's iptables (nft
backend), ipset and nftables, inside a throw-away network namespace. The host has no IPVS and
no dummy links: those parts are proven in the lab VM (extensions/molecule/proxy_cleanup)."""

from __future__ import annotations

KUBELET_AND_FOREIGN = """*filter
:KUBE-FIREWALL - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:FOREIGN-CHAIN - [0:0]
-A INPUT -j KUBE-FIREWALL
-A INPUT -j FOREIGN-CHAIN
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A FOREIGN-CHAIN -m set --match-set FOREIGN-SET src -j RETURN
COMMIT
*nat
:KUBE-KUBELET-CANARY - [0:0]
:FOREIGN-CHAIN - [0:0]
-A POSTROUTING -j FOREIGN-CHAIN
-A FOREIGN-CHAIN -d 192.0.2.0/24 -j RETURN
COMMIT
"""

IPTABLES_MODE = """*nat
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-NTEST0000000000A - [0:0]
:KUBE-SEP-NTEST0000000000B - [0:0]
:KUBE-PROXY-CANARY - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 443 -j KUBE-SVC-NTEST0000000000A
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-SVC-NTEST0000000000A -j KUBE-SEP-NTEST0000000000B
-A KUBE-SEP-NTEST0000000000B -s 10.0.0.5/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-NTEST0000000000B -p tcp -m tcp -j DNAT --to-destination 10.0.0.5:6443
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
COMMIT
*filter
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" \
-j KUBE-EXTERNAL-SERVICES
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.96.0.99/32 -p tcp -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable
COMMIT
*mangle
:KUBE-PROXY-CANARY - [0:0]
COMMIT
"""

IPVS_MODE_RULES = """*nat
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-LOAD-BALANCER - [0:0]
:KUBE-MARK-MASQ - [0:0]
-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT
-A KUBE-POSTROUTING -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE
-A KUBE-NODE-PORT -p tcp -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ
COMMIT
*filter
:KUBE-IPVS-FILTER - [0:0]
:KUBE-NODE-PORT - [0:0]
-A INPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-FILTER
-A KUBE-IPVS-FILTER -m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN
COMMIT
"""

IPVS_SETS = (
    "ipset create FOREIGN-SET hash:ip && ipset create KUBE-CLUSTER-IP hash:ip,port && "
    "ipset create KUBE-LOOP-BACK hash:ip,port,ip && ipset create KUBE-NODE-PORT-TCP bitmap:port range 0-65535 && "
    "ipset create KUBE-6-CLUSTER-IP hash:ip,port family inet6"
)


def restore(netns, text, tool="iptables-restore"):
    netns.sh(f"{tool} --noflush <<'EOF'\n{text}EOF")


def kube_lines(netns, tool="iptables-save"):
    return [line for line in netns.sh(tool).splitlines() if "KUBE-" in line or "FOREIGN" in line]


def kept(netns):
    """The kubelet and foreign lines every cleanup must leave exactly as they were."""
    return [line for line in kube_lines(netns) if "FOREIGN" in line or "KUBE-FIREWALL" in line
            or "KUBE-KUBELET-CANARY" in line]


def test_iptables_mode_cleanup_check_diff_apply_and_second_run(netns):
    netns.sh("ipset create FOREIGN-SET hash:ip")
    restore(netns, KUBELET_AND_FOREIGN)
    restore(netns, IPTABLES_MODE)
    protected = kept(netns)
    before = kube_lines(netns)
    facts = netns.module("dataplane_facts")["dataplane"]
    assert (facts["mode"], facts["modes"]) == ("iptables", ["iptables"]), facts

    checked = netns.module("proxy_cleanup", check_mode=True, diff=True, mode="iptables")
    assert checked["changed"], checked
    assert kube_lines(netns) == before, "check mode changed the tables"
    assert "chain nft/ipv4/nat/KUBE-SVC-NTEST0000000000A" in checked["diff"]["before"]
    assert checked["diff"]["after"] == ""

    done = netns.module("proxy_cleanup", diff=True, mode="iptables")
    assert done["changed"] and done["removed"] == checked["removed"], done
    assert kube_lines(netns) == protected
    assert "KUBE-" not in netns.sh("iptables-save -t mangle")

    again = netns.module("proxy_cleanup", mode="iptables")
    assert not again["changed"] and again["commands"] == [], again
    assert netns.module("dataplane_facts")["dataplane"]["mode"] == "none"


def test_ipvs_mode_rules_then_sets_while_iptables_mode_stays(netns):
    netns.sh(IPVS_SETS)
    restore(netns, KUBELET_AND_FOREIGN)
    restore(netns, IPVS_MODE_RULES)
    # Declaring a chain under --noflush flushes it: add iptables mode without re-declaring the shared ones.
    nat, rest = IPTABLES_MODE.split("*filter", 1)
    shared = (":KUBE-SERVICES ", ":KUBE-POSTROUTING ", ":KUBE-MARK-MASQ ")
    nat = "\n".join(line for line in nat.splitlines() if not line.startswith(shared))
    restore(netns, nat + "\n*filter" + rest)
    restore(netns, "*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -m set --match-set KUBE-6-CLUSTER-IP dst,dst "
                   "-j ACCEPT\nCOMMIT\n", tool="ip6tables-restore")
    protected = kept(netns)
    facts = netns.module("dataplane_facts")["dataplane"]
    assert facts["modes"] == ["iptables", "ipvs"], facts
    assert facts["ipsets"]["kube_proxy"] == ["KUBE-6-CLUSTER-IP", "KUBE-CLUSTER-IP", "KUBE-LOOP-BACK",
                                             "KUBE-NODE-PORT-TCP"]

    done = netns.module("proxy_cleanup", mode="ipvs", scope={"cidrs": ["10.96.0.0/12"]})
    assert done["changed"], done
    assert done["removed"]["ipsets"] == ["KUBE-CLUSTER-IP", "KUBE-LOOP-BACK", "KUBE-NODE-PORT-TCP",
                                         "KUBE-6-CLUSTER-IP"]
    assert netns.sh("ipset list -n").split() == ["FOREIGN-SET"]
    nat = netns.sh("iptables-save -t nat")
    # iptables mode is live: its chains and the shared ones stay, without the set rules.
    assert "-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 443 -j KUBE-SVC-NTEST0000000000A" in nat
    assert "--match-set" not in nat and "KUBE-NODE-PORT " not in nat and ":KUBE-LOAD-BALANCER" not in nat
    assert ":KUBE-POSTROUTING" in nat and ":KUBE-MARK-MASQ" in nat
    assert "KUBE-IPVS-FILTER" not in netns.sh("iptables-save -t filter")
    # ip6tables: iptables mode does not show in IPv6, so the shared chain went as a whole.
    assert "KUBE-" not in netns.sh("ip6tables-save")
    assert kept(netns) == protected
    assert not netns.module("proxy_cleanup", mode="ipvs", scope={"cidrs": ["10.96.0.0/12"]})["changed"]
    assert netns.module("dataplane_facts")["dataplane"]["modes"] == ["iptables"]

    # And now iptables mode: with ipvs gone, the shared chains go too.
    assert netns.module("proxy_cleanup", mode="iptables")["changed"]
    assert kube_lines(netns) == protected


def test_foreign_rule_using_a_kube_proxy_set_stops_everything(netns):
    netns.sh(IPVS_SETS)
    restore(netns, IPVS_MODE_RULES)
    restore(netns, "*filter\n:FOREIGN-CHAIN - [0:0]\n-A FOREIGN-CHAIN -m set --match-set KUBE-CLUSTER-IP dst,dst "
                   "-j RETURN\nCOMMIT\n")
    before = kube_lines(netns)
    failed = netns.module("proxy_cleanup", mode="ipvs")
    assert failed.get("failed") and "FOREIGN-CHAIN" in failed["msg"], failed
    assert kube_lines(netns) == before
    assert "KUBE-CLUSTER-IP" in netns.sh("ipset list -n").split()


def test_nftables_mode_only_kube_proxy_tables(netns):
    netns.sh("nft add table ip kube-proxy && nft add chain ip kube-proxy services && "
             "nft add table ip6 kube-proxy && nft add table inet foreign && nft add table ip6 foreign6")
    restore(netns, IPTABLES_MODE)
    facts = netns.module("dataplane_facts")["dataplane"]
    assert (facts["mode"], facts["nftables"]) == ("mixed", ["ip kube-proxy", "ip6 kube-proxy"])

    only_v6 = netns.module("proxy_cleanup", mode="nftables", family="ipv6")
    assert only_v6["removed"]["nftables_tables"] == ["ip6 kube-proxy"]
    done = netns.module("proxy_cleanup", mode="nftables", diff=True)
    assert done["removed"]["nftables_tables"] == ["ip kube-proxy"], done
    tables = netns.sh("nft list tables")
    assert "kube-proxy" not in tables and "table inet foreign" in tables and "table ip6 foreign6" in tables
    assert not netns.module("proxy_cleanup", mode="nftables")["changed"]
    # iptables mode's chains were not nftables mode's to remove.
    assert netns.module("dataplane_facts")["dataplane"]["mode"] == "iptables"


def test_bad_input_fails_before_any_change(netns):
    restore(netns, IPTABLES_MODE)
    before = kube_lines(netns)
    bad_cidr = netns.module("proxy_cleanup", mode="ipvs", scope={"cidrs": ["10.96.0.0/33"]})
    assert bad_cidr.get("failed") and "scope.cidrs" in bad_cidr["msg"], bad_cidr
    bad_mode = netns.module("proxy_cleanup", mode="userspace")
    assert bad_mode.get("failed") and "mode" in bad_mode["msg"], bad_mode
    assert kube_lines(netns) == before
