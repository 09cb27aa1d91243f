# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The ipvs_node role's masquerade baseline (tasks/masquerade.yml) run by ansible-playbook inside a
fresh network namespace: what it writes, that a second run changes nothing, and that the hairpin
rule follows the KUBE-LOOP-BACK set as kube-proxy's does - with the role managing the sets and
with it only reading them. The same tasks run on the lab VMs in the ipset_iptables scenario, with
traffic; this is the quick proof of the role's logic on a real kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import COLLECTIONS_PATH

ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
PLAYBOOK = """
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - ansible.builtin.include_role:
        name: kubeipvs.node.ipvs_node
        tasks_from: masquerade
"""
HAIRPIN = ('-A KUBE-POSTROUTING -m comment --comment "Kubernetes endpoints dst ip:port, source ip for solving '
           'hairpin purpose" -m set --match-set {} dst,dst,src -j MASQUERADE')
POSTROUTING = ["-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
               "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0",
               '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE '
               "--random-fully"]


def play(netns, tmp_path, *options, **variables):
    """The masquerade tasks in ``netns``; (play recap counts of localhost, the output)."""
    playbook = tmp_path / "masquerade.yml"
    playbook.write_text(PLAYBOOK)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS_PATH), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCALHOST_WARNING="False", ANSIBLE_INVENTORY_UNPARSED_WARNING="False")
    completed = subprocess.run(
        ["ip", "netns", "exec", netns.name, str(ANSIBLE_PLAYBOOK), str(playbook), "-e", json.dumps(variables), *options],
        capture_output=True, text=True, env=env, check=False)
    recap = next(line for line in completed.stdout.splitlines() if line.startswith("localhost ") and "ok=" in line)
    counts = {key: int(value) for key, value in (part.split("=") for part in recap.split()[2:])}
    assert completed.returncode == 0 and counts["failed"] == 0, completed.stdout + completed.stderr
    return counts, completed.stdout


def postrouting(netns):
    return [netns.sh(f"{save} -t nat -S KUBE-POSTROUTING").splitlines()[1:] for save in ("iptables", "ip6tables")]


def test_the_baseline_is_kube_proxy_s_and_a_second_run_changes_nothing(netns, tmp_path):
    first, _output = play(netns, tmp_path)
    again, _output = play(netns, tmp_path)

    assert first["changed"] == 2, first  # the sets task, and the chains task (one item per family)
    assert again["changed"] == 0, again
    # the namespace has IPv6, so both families (kube-proxy's IPv6 proxier would run here)
    sets = netns.sh("ipset list -n").split()
    assert len(sets) == 34 and "KUBE-6-LOAD-BALANCER-SOURCE-CID" in sets, sets
    assert postrouting(netns) == [POSTROUTING, POSTROUTING]  # no hairpin rule: KUBE-LOOP-BACK is empty
    assert netns.sh("iptables -t nat -S KUBE-MARK-MASQ").splitlines()[1:] == [
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000"]
    jumps = netns.sh("iptables -S INPUT").splitlines()
    assert '-A INPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-FILTER' in jumps, jumps


def test_the_hairpin_rule_follows_kube_loop_back_managed_or_only_read(netns, tmp_path):
    play(netns, tmp_path)
    netns.sh("ipset add KUBE-LOOP-BACK 10.244.1.5,tcp:8080,10.244.1.5")  # as kube-proxy adds a hairpin endpoint

    checked, output = play(netns, tmp_path, "--check", "--diff", ipvs_node_ipsets_manage=False)
    assert checked["changed"] == 1 and "+" + HAIRPIN.format("KUBE-LOOP-BACK")[2:] in output.replace("+-A", "+"), output
    assert postrouting(netns) == [POSTROUTING, POSTROUTING]  # check mode wrote nothing

    applied, _output = play(netns, tmp_path, ipvs_node_ipsets_manage=False)
    assert applied["changed"] == 1, applied  # the chains (IPv4 only: KUBE-6-LOOP-BACK is still empty)
    assert postrouting(netns) == [[HAIRPIN.format("KUBE-LOOP-BACK"), *POSTROUTING], POSTROUTING]

    netns.sh("ipset flush KUBE-LOOP-BACK")  # kube-proxy's last hairpin endpoint went
    emptied, _output = play(netns, tmp_path)
    assert emptied["changed"] == 1, emptied
    assert postrouting(netns) == [POSTROUTING, POSTROUTING]


def test_a_node_without_ipv6_gets_ipv4_only(netns, tmp_path):
    netns.sh("sysctl -qw net.ipv6.conf.all.disable_ipv6=1")
    play(netns, tmp_path)
    sets = netns.sh("ipset list -n").split()
    assert len(sets) == 17 and not any(name.startswith("KUBE-6-") for name in sets), sets
    assert netns.sh("ip6tables -t nat -S").splitlines() == ["-P PREROUTING ACCEPT", "-P INPUT ACCEPT",
                                                            "-P OUTPUT ACCEPT", "-P POSTROUTING ACCEPT"]
