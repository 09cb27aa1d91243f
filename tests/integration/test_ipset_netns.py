# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""kubeipvs.node.ipset against the host kernel's ip_set, inside a throw-away network namespace."""

from __future__ import annotations

import subprocess
import time

FOREIGN = (
    "create FOREIGN hash:ip family inet hashsize 1024 maxelem 65536\nadd FOREIGN 192.0.2.1\nadd FOREIGN 192.0.2.2\n"
)


def save(netns, name):
    return netns.sh(f"ipset save {name}")


def members(netns, name):
    return {line.split(" ", 2)[2] for line in save(netns, name).splitlines() if line.startswith("add ")}


def test_converge_check_diff_and_idempotence_leave_foreign_sets_alone(netns):
    netns.sh(f"ipset restore <<'EOF'\n{FOREIGN}EOF")
    foreign_before = save(netns, "FOREIGN")
    args = {
        "name": "KUBE-LOOP-BACK",
        "type": "hash:ip,port,ip",
        "members": ["10.96.0.10,80,10.244.1.5", "10.96.0.10,udp:53,10.244.1.5/32"],
        "exclusive": True,
    }

    checked = netns.module("ipset", check_mode=True, diff=True, **args)
    assert checked["changed"] and checked["method"] == "create"
    assert "+10.96.0.10,tcp:80,10.244.1.5" in "\n".join("+" + line for line in checked["diff"]["after"].splitlines())
    assert netns.sh("ipset list -n").split() == ["FOREIGN"], "check mode created the set"

    first = netns.module("ipset", **args)
    assert first["changed"] and first["members_count"] == 2
    assert members(netns, "KUBE-LOOP-BACK") == {"10.96.0.10,tcp:80,10.244.1.5", "10.96.0.10,udp:53,10.244.1.5"}
    assert "hashsize 1024 maxelem 65536" in save(netns, "KUBE-LOOP-BACK")

    again = netns.module("ipset", diff=True, **args)
    assert not again["changed"], again
    assert again["diff"]["before"] == again["diff"]["after"]

    changed = netns.module("ipset", **dict(args, members=["10.96.0.10,tcp:80,10.244.1.5", "10.96.0.11,80,10.244.1.6"]))
    assert changed["method"] == "incremental" and (changed["added_count"], changed["removed_count"]) == (1, 1)
    assert save(netns, "FOREIGN") == foreign_before


def test_ipv4_mapped_ipv6_members_converge(netns):
    """ipset prints ::ffff:a00:1 as ::ffff:10.0.0.1: the member compares equal and a second run changes nothing."""
    args = {"name": "S6", "type": "hash:ip", "family": "inet6", "exclusive": True,
            "members": ["::ffff:a00:1", "::ffff:10.0.0.2", "::102:304", "2001:db8::1"]}
    assert netns.module("ipset", **args)["changed"]
    assert members(netns, "S6") == {"::ffff:10.0.0.1", "::ffff:10.0.0.2", "::1.2.3.4", "2001:db8::1"}
    again = netns.module("ipset", **args)
    assert not again["changed"], again


def test_option_change_is_swapped_in_and_keeps_members(netns):
    netns.module("ipset", name="KUBE-NODE-PORT-TCP", type="bitmap:port", range="0-65535", members=["30080"])
    result = netns.module(
        "ipset", name="KUBE-NODE-PORT-TCP", type="bitmap:port", range="30000-32767", members=["tcp:30081"]
    )
    assert result["method"] == "swap" and "range" in result["reasons"][0]
    assert "range 30000-32767" in save(netns, "KUBE-NODE-PORT-TCP")
    assert members(netns, "KUBE-NODE-PORT-TCP") == {"30080", "30081"}
    assert netns.sh("ipset list -n").split() == ["KUBE-NODE-PORT-TCP"], "scratch set left behind"


def test_large_change_is_atomic_for_readers(netns, tmp_path):
    """A reader polling the set during a 100k-member replacement sees only the old or the new set."""
    old = [f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}" for n in range(1, 100001)]
    new = [f"11.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}" for n in range(1, 100001)]
    old_file, new_file = tmp_path / "old.txt", tmp_path / "new.txt"
    old_file.write_text("\n".join(["192.0.2.7", *old]) + "\n")
    new_file.write_text("\n".join(["192.0.2.7", *new]) + "\n")
    base = {"name": "BIG", "type": "hash:ip", "maxelem": 262144, "exclusive": True}
    assert netns.module("ipset", members_file=str(old_file), **base)["method"] == "create"

    log = tmp_path / "reader.log"
    with open(log, "w") as reader_log:
        reader = netns.popen(
            "while :; do ipset list -t BIG | sed -n 's/^Number of entries: //p'; "
            "ipset test BIG 192.0.2.7 >/dev/null 2>&1 && echo in || echo OUT; done",
            stdout=reader_log,
            stderr=subprocess.DEVNULL,
        )
    try:
        time.sleep(0.3)
        result = netns.module("ipset", diff=True, members_file=str(new_file), **base)
        time.sleep(0.3)
    finally:
        reader.kill()
        reader.wait()
    assert result["method"] == "swap" and result["added_count"] == 100000 and result["removed_count"] == 100000
    assert "# added (first 50 of 100000):" in result["diff"]["after"]
    assert len(result["diff"]["after"].splitlines()) < 60
    samples = log.read_text().split()
    counts = {sample for sample in samples if sample not in ("in", "OUT")}
    assert len(samples) > 20, "the reader did not poll during the change"
    assert counts <= {"100001"}, f"reader saw a partial set: {sorted(counts)[:10]}"
    assert "OUT" not in samples, "the sentinel member vanished during the change"
    assert members(netns, "BIG") == {"192.0.2.7", *new}
    assert not netns.module("ipset", members_file=str(new_file), **base)["changed"]


def test_destroying_a_set_iptables_uses_fails_and_names_the_rule(netns):
    netns.module("ipset", name="KUBE-LOOP-BACK", type="hash:ip,port,ip")
    netns.sh(
        "iptables -t nat -N KUBE-POSTROUTING && iptables -t nat -A KUBE-POSTROUTING "
        "-m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE"
    )
    result = netns.module("ipset", name="KUBE-LOOP-BACK", state="absent")
    assert result.get("failed") and "--match-set KUBE-LOOP-BACK dst,dst,src" in result["msg"], result
    assert netns.sh("ipset list -n").split() == ["KUBE-LOOP-BACK"]
    netns.sh("iptables -t nat -F KUBE-POSTROUTING")
    assert netns.module("ipset", name="KUBE-LOOP-BACK", state="absent")["changed"]
    assert netns.sh("ipset list -n").split() == []
    assert not netns.module("ipset", name="KUBE-LOOP-BACK", state="absent")["changed"]


def test_bad_input_fails_before_any_change(netns):
    netns.module("ipset", name="S", type="hash:ip,port", members=["10.0.0.1,80"])
    before = save(netns, "S")

    wrong_entry = netns.module(
        "ipset", name="S", type="hash:ip,port", exclusive=True, members=["10.0.0.2,80", "10.0.0.3"]
    )
    assert wrong_entry.get("failed") and "10.0.0.3" in wrong_entry["msg"], wrong_entry
    unknown_type = netns.module("ipset", name="S", type="hash:bogus", members=["10.0.0.2"])
    assert unknown_type.get("failed") and "hash:bogus" in unknown_type["msg"], unknown_type
    wrong_family = netns.module("ipset", name="S6", type="hash:ip", family="inet6", members=["10.0.0.1"])
    assert wrong_family.get("failed") and "IPv6" in wrong_family["msg"], wrong_family
    assert save(netns, "S") == before
    assert netns.sh("ipset list -n").split() == ["S"]


KUBE_SETS = [
    {"name": "KUBE-LOOP-BACK", "type": "hash:ip,port,ip"},
    {"name": "KUBE-CLUSTER-IP", "type": "hash:ip,port"},
    {"name": "KUBE-NODE-PORT-TCP", "type": "bitmap:port", "range": "0-65535"},
    {"name": "KUBE-6-LOOP-BACK", "type": "hash:ip,port,ip", "family": "inet6"},
    {"name": "KUBE-6-CLUSTER-IP", "type": "hash:ip,port", "family": "inet6", "members": ["2001:db8::a,tcp:443"]},
]


def test_many_sets_in_one_call_converge_idempotent_and_leave_foreign_sets_alone(netns):
    netns.sh(f"ipset restore <<'EOF'\n{FOREIGN}EOF")
    foreign_before = save(netns, "FOREIGN")

    checked = netns.module("ipset", check_mode=True, diff=True, sets=KUBE_SETS)
    assert checked["changed"] and len(checked["changed_sets"]) == 5
    assert "# ipset KUBE-6-CLUSTER-IP\n" in checked["diff"]["after"]
    assert netns.sh("ipset list -n").split() == ["FOREIGN"], "check mode created a set"

    first = netns.module("ipset", sets=KUBE_SETS, hashsize=2048)
    assert [one["method"] for one in first["sets"]] == ["create"] * 5 and first["added_count"] == 1
    assert sorted(netns.sh("ipset list -n").split()) == sorted(["FOREIGN"] + [one["name"] for one in KUBE_SETS])
    assert "family inet6 hashsize 2048 maxelem 65536" in save(netns, "KUBE-6-LOOP-BACK")
    assert "range 0-65535" in save(netns, "KUBE-NODE-PORT-TCP")
    assert members(netns, "KUBE-6-CLUSTER-IP") == {"2001:db8::a,tcp:443"}

    # kube-proxy adds members; the role's sets (exclusive false) keep them.
    netns.sh("ipset add KUBE-CLUSTER-IP 10.96.0.1,tcp:443")
    again = netns.module("ipset", diff=True, sets=KUBE_SETS, hashsize=2048)
    assert not again["changed"] and again["changed_sets"] == [], again
    assert again["diff"]["before"] == again["diff"]["after"] == "# 5 of 5 sets unchanged\n"
    assert members(netns, "KUBE-CLUSTER-IP") == {"10.96.0.1,tcp:443"}

    # Options change for one set, another goes away: one call, the rest untouched.
    changed = netns.module(
        "ipset",
        hashsize=2048,
        sets=[*KUBE_SETS[:2], dict(KUBE_SETS[2], range="30000-32767"), {"name": "KUBE-6-LOOP-BACK", "state": "absent"}],
    )
    assert [one["method"] for one in changed["sets"]] == ["none", "none", "swap", "destroy"], changed
    assert "range 30000-32767" in save(netns, "KUBE-NODE-PORT-TCP")
    assert "KUBE-6-LOOP-BACK" not in netns.sh("ipset list -n").split()
    assert save(netns, "FOREIGN") == foreign_before


def test_one_bad_set_spec_fails_the_call_and_changes_nothing(netns):
    netns.module("ipset", name="S", type="hash:ip,port", members=["10.0.0.1,80"])
    before = netns.sh("ipset save")
    result = netns.module(
        "ipset",
        sets=[
            {"name": "NEW", "type": "hash:ip", "members": ["10.0.0.9"]},
            {"name": "S", "type": "hash:ip,port", "members": ["10.0.0.2,80", "10.0.0.3"], "exclusive": True},
            {"name": "NEW", "type": "hash:ip"},
        ],
    )
    assert result.get("failed"), result
    assert "10.0.0.3" in result["msg"] and "listed more than once: NEW" in result["msg"], result["msg"]
    assert netns.sh("ipset save") == before
