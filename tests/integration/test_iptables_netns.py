# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""kubeipvs.node.iptables_chain against the host kernel's iptables, inside a throw-away network namespace."""

from __future__ import annotations

FOREIGN = """*nat
:FOREIGN - [0:0]
-A FOREIGN -p tcp --dport 8080 -j SNAT --to-source 192.0.2.1
-A POSTROUTING -j FOREIGN
COMMIT
"""

POSTROUTING = {
    "table": "nat",
    "chain": "KUBE-POSTROUTING",
    "rules": [
        "-m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-j MARK --xor-mark 0x4000",
        '-m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully',
        "-m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE",
        "-p tcp --dport 80 -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN",
    ],
    "jumps": [{"chain": "POSTROUTING", "comment": "kubernetes postrouting rules"}],
}


def lines(netns, table, needle):
    return [line for line in netns.sh(f"iptables-save -t {table}").splitlines() if needle in line]


def test_converge_check_diff_idempotence_and_foreign_chains(netns):
    netns.sh(f"iptables-restore --noflush <<'EOF'\n{FOREIGN}EOF")
    netns.sh("ipset create KUBE-LOOP-BACK hash:ip,port,ip")
    foreign_before = lines(netns, "nat", "FOREIGN")

    checked = netns.module("iptables_chain", check_mode=True, diff=True, **POSTROUTING)
    assert checked["changed"], checked
    assert "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0" in checked["diff"]["after"]
    assert not lines(netns, "nat", "KUBE-POSTROUTING"), "check mode changed the table"

    first = netns.module("iptables_chain", **POSTROUTING)
    assert first["changed"] and first["backend"] == "nft", first
    saved = lines(netns, "nat", "KUBE-POSTROUTING")
    assert saved[1] == '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING'
    assert "-A KUBE-POSTROUTING -p tcp -m tcp --dport 80 -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN" in saved

    again = netns.module("iptables_chain", diff=True, **POSTROUTING)
    assert not again["changed"], again["diff"]
    assert again["commands"] == []

    # Drift in the owned chain is repaired; a jump appended by hand is a duplicate and goes.
    netns.sh(
        "iptables -t nat -A KUBE-POSTROUTING -j ACCEPT && iptables -t nat -A POSTROUTING "
        "-m comment --comment 'kubernetes postrouting rules' -j KUBE-POSTROUTING"
    )
    repaired = netns.module("iptables_chain", **POSTROUTING)
    assert repaired["changed"]
    assert lines(netns, "nat", "KUBE-POSTROUTING") == saved
    assert lines(netns, "nat", "FOREIGN") == foreign_before


def test_jump_positions_and_args(netns):
    netns.sh(f"iptables-restore --noflush <<'EOF'\n{FOREIGN}EOF")
    netns.module("iptables_chain", table="nat", chain="KUBE-SERVICES", rules=["-j RETURN"])
    args = {
        "table": "nat",
        "chain": "KUBE-NODE-PORT",
        "rules": ["-j RETURN"],
        "jumps": [
            {"chain": "POSTROUTING", "position": "last"},
            {"chain": "OUTPUT", "args": "-m addrtype --dst-type LOCAL", "comment": "node ports"},
        ],
    }
    assert netns.module("iptables_chain", **args)["changed"]
    postrouting = [line for line in netns.sh("iptables-save -t nat").splitlines() if line.startswith("-A POSTROUTING")]
    assert postrouting == ["-A POSTROUTING -j FOREIGN", "-A POSTROUTING -j KUBE-NODE-PORT"]
    assert lines(netns, "nat", "-A OUTPUT") == [
        '-A OUTPUT -m addrtype --dst-type LOCAL -m comment --comment "node ports" -j KUBE-NODE-PORT'
    ]
    assert not netns.module("iptables_chain", **args)["changed"]
    # A jump no longer listed is removed; the chain stays.
    fewer = netns.module("iptables_chain", **dict(args, jumps=args["jumps"][:1]))
    assert fewer["changed"] and lines(netns, "nat", "-A OUTPUT") == []


def test_rejected_rule_fails_and_applies_nothing(netns):
    netns.module("iptables_chain", table="filter", chain="KUBE-FORWARD", rules=["-j ACCEPT"])
    before = netns.sh("iptables-save -t filter | grep -v '^#'")
    bad = netns.module(
        "iptables_chain",
        table="filter",
        chain="KUBE-FORWARD",
        rules=["-j DROP", "-p tcp -j DNAT --to-destination 10.0.0.1:80"],
        jumps=[{"chain": "FORWARD"}],
    )
    assert bad.get("failed") and "nothing was applied" in bad["msg"], bad
    missing_set = netns.module(
        "iptables_chain", table="filter", chain="KUBE-FORWARD", rules=["-m set --match-set NOSUCH src -j ACCEPT"]
    )
    assert missing_set.get("failed") and "NOSUCH" in missing_set["msg"], missing_set
    malformed = netns.module("iptables_chain", table="filter", chain="KUBE-FORWARD", rules=["--dport 80 -j ACCEPT"])
    assert malformed.get("failed") and "protocol" in malformed["msg"], malformed
    assert netns.sh("iptables-save -t filter | grep -v '^#'") == before


def test_absent_removes_chain_and_jumps_but_not_foreign_references(netns):
    netns.sh(f"iptables-restore --noflush <<'EOF'\n{FOREIGN}EOF")
    args = {
        "table": "nat",
        "chain": "KUBE-MARK-MASQ",
        "rules": ["-j MARK --or-mark 0x4000"],
        "jumps": [{"chain": "PREROUTING"}],
    }
    netns.module("iptables_chain", **args)
    netns.sh("iptables -t nat -A FOREIGN -j KUBE-MARK-MASQ")
    refused = netns.module("iptables_chain", table="nat", chain="KUBE-MARK-MASQ", state="absent")
    assert refused.get("failed") and "-A FOREIGN -j KUBE-MARK-MASQ" in refused["msg"], refused
    assert lines(netns, "nat", "-A PREROUTING -j KUBE-MARK-MASQ"), "a refused removal changed something"
    netns.sh("iptables -t nat -D FOREIGN -j KUBE-MARK-MASQ")
    removed = netns.module("iptables_chain", table="nat", chain="KUBE-MARK-MASQ", state="absent")
    assert removed["changed"]
    assert lines(netns, "nat", "KUBE-MARK-MASQ") == []
    assert len(lines(netns, "nat", "FOREIGN")) == 3
    assert not netns.module("iptables_chain", table="nat", chain="KUBE-MARK-MASQ", state="absent")["changed"]


def test_ipv6_chain(netns):
    args = {
        "table": "filter",
        "chain": "KUBE-IPVS-FILTER",
        "family": "ipv6",
        "rules": ["-d 2001:db8::1 -p tcp --dport 443 -j ACCEPT", "-j REJECT"],
        "jumps": [{"chain": "INPUT"}],
    }
    assert netns.module("iptables_chain", **args)["changed"]
    saved = [line for line in netns.sh("ip6tables-save -t filter").splitlines() if "KUBE-IPVS-FILTER" in line]
    assert "-A KUBE-IPVS-FILTER -d 2001:db8::1/128 -p tcp -m tcp --dport 443 -j ACCEPT" in saved
    assert not netns.module("iptables_chain", **args)["changed"]


def baseline_chains(loop_back="KUBE-LOOP-BACK"):
    return [
        {"table": "nat", "chain": "KUBE-MARK-MASQ", "rules": ["-j MARK --or-mark 0x4000"]},
        {
            "table": "nat",
            "chain": "KUBE-POSTROUTING",
            "rules": [
                f"-m set --match-set {loop_back} dst,dst,src -j MASQUERADE",
                "-m mark ! --mark 0x4000/0x4000 -j RETURN",
                "-j MARK --xor-mark 0x4000",
            ],
            "jumps": [{"chain": "POSTROUTING", "comment": "kubernetes postrouting rules"}],
        },
        {
            "table": "nat",
            "chain": "KUBE-SERVICES",
            "jumps": [
                {"chain": "OUTPUT", "comment": "kubernetes service portals"},
                {"chain": "PREROUTING", "comment": "kubernetes service portals"},
            ],
        },
        {"table": "filter", "chain": "KUBE-FORWARD", "jumps": [{"chain": "FORWARD", "comment": "forwarding"}]},
    ]


def test_many_chains_are_one_transaction_per_table_and_idempotent(netns):
    netns.sh(f"iptables-restore --noflush <<'EOF'\n{FOREIGN}EOF")
    netns.sh("ipset create KUBE-LOOP-BACK hash:ip,port,ip")
    foreign_before = lines(netns, "nat", "FOREIGN")

    first = netns.module("iptables_chain", diff=True, chains=baseline_chains())
    assert first["changed"] and [one["changed"] for one in first["chains"]] == [True] * 4, first
    # one *nat and one *filter transaction
    assert first["commands"].count("COMMIT") == 2 and first["commands"][0] == "*nat", first["commands"]
    assert "# nat/KUBE-POSTROUTING\n" in first["diff"]["after"]
    nat = netns.sh("iptables-save -t nat")
    assert "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000" in nat
    assert "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0" in nat
    # Inserted first, in the order listed (as separate runs in that order would have done).
    assert lines(netns, "nat", "-A PREROUTING") == [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'
    ]
    assert lines(netns, "nat", "-A POSTROUTING") == [
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        "-A POSTROUTING -j FOREIGN",
    ]
    assert lines(netns, "filter", "-A FORWARD") == ["-A FORWARD -m comment --comment forwarding -j KUBE-FORWARD"]
    assert lines(netns, "nat", "FOREIGN")[1:] == foreign_before[1:]

    again = netns.module("iptables_chain", diff=True, chains=baseline_chains())
    assert not again["changed"] and again["commands"] == [], again
    assert again["diff"]["before"] == again["diff"]["after"]


def test_bad_chain_spec_fails_the_call_and_applies_nothing(netns):
    netns.sh("ipset create KUBE-LOOP-BACK hash:ip,port,ip")
    before = netns.sh("iptables-save | grep -v '^#' || true")
    chains = baseline_chains()
    chains.append({"table": "filter", "chain": "KUBE-FORWARD", "rules": ["-j ACCEPT"]})
    chains.append({"table": "filter", "chain": "KUBE-BAD", "rules": ["--dport 80 -j ACCEPT"]})
    result = netns.module("iptables_chain", chains=chains)
    assert result.get("failed") and "listed more than once" in result["msg"] and "KUBE-BAD" in result["msg"], result
    rejected = netns.module(
        "iptables_chain", chains=[*baseline_chains(), {"table": "filter", "chain": "KUBE-X", "rules": ["-j DNAT"]}]
    )
    assert rejected.get("failed") and "nothing was applied" in rejected["msg"], rejected
    assert netns.sh("iptables-save | grep -v '^#' || true") == before


def test_check_mode_validates_rules_on_sets_the_node_does_not_have_yet(netns):
    """On a fresh node the ipset task only pretended to create KUBE-LOOP-BACK in check mode."""
    checked = netns.module("iptables_chain", check_mode=True, diff=True, chains=baseline_chains())
    assert checked["changed"] and not checked.get("failed"), checked
    # ansible-core 2.19 reports warnings as structured events: look for the set in their text.
    assert "ipset KUBE-LOOP-BACK does not exist" in str(checked.get("warnings")), checked
    assert "-m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE" in checked["diff"]["after"]
    assert netns.sh("ipset list -n").split() == [], "check mode created a set on the node"
    assert not lines(netns, "nat", "KUBE-"), "check mode changed the table"
    # A rule iptables rejects still fails in check mode, stand-in or not.
    bad = netns.module(
        "iptables_chain",
        check_mode=True,
        chains=[{"table": "nat", "chain": "KUBE-X", "rules": ["-m set --match-set KUBE-LOOP-BACK dst -j DNAT"]}],
    )
    assert bad.get("failed") and "nothing was applied" in bad["msg"], bad
    # For real, the missing set is a clear failure.
    real = netns.module("iptables_chain", chains=baseline_chains())
    assert real.get("failed") and "ipset KUBE-LOOP-BACK, which does not exist" in real["msg"], real
    assert not lines(netns, "nat", "KUBE-")


LOOP = """*filter
:KUBE-A - [0:0]
:KUBE-OLD - [0:0]
-A INPUT -s 192.0.2.1/32 -j ACCEPT
-A INPUT -j KUBE-A
-A INPUT -s 10.0.0.0/8 -j KUBE-A
-A INPUT -j KUBE-A
-A KUBE-A -j RETURN
-A FORWARD -j KUBE-OLD
-A KUBE-OLD -j DROP
COMMIT
*nat
:KUBE-X - [0:0]
:FOREIGN - [0:0]
-A FOREIGN -j KUBE-X
-A PREROUTING -j FOREIGN
COMMIT
"""


def test_a_table_the_kernel_refuses_rolls_back_the_tables_applied_before_it(netns):
    """The nat change loops through a foreign chain the scratch namespace has empty, so only the node's
    kernel refuses it - after filter was changed: filter is put back exactly, jump positions included."""
    netns.sh(f"iptables-restore <<'EOF'\n{LOOP}EOF")
    before = netns.sh("iptables-save | grep -v '^#'")
    chains = [{"table": "filter", "chain": "KUBE-A", "rules": ["-j ACCEPT"], "jumps": [{"chain": "INPUT"}]},
              {"table": "filter", "chain": "KUBE-NEW", "rules": ["-j RETURN"],
               "jumps": [{"chain": "OUTPUT", "position": "last", "comment": "new chain"}]},
              {"table": "filter", "chain": "KUBE-OLD", "state": "absent"},
              {"table": "nat", "chain": "KUBE-X", "rules": ["-j FOREIGN"]}]
    result = netns.module("iptables_chain", chains=chains)
    assert result.get("failed") and "to filter were rolled back, nothing changed" in result["msg"], result
    assert netns.sh("iptables-save | grep -v '^#'") == before
