# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""kubeipvs.node.conntrack_flows against the host kernel's connection tracker, inside a throw-away
network namespace: only the flows of the protocol to the given networks go."""

from __future__ import annotations


def flows(netns):
    """The table's entries without their ticking timeouts (protocol, tuples, flags)."""
    lines = netns.sh("conntrack -L 2>/dev/null || true").splitlines()
    return sorted(" ".join(line.split()[:2] + line.split()[3:]) for line in lines if line.strip())


def make_flows(netns):
    # Tracking starts in a namespace once a rule needs it.
    netns.sh("ip link set lo up && iptables -w -A OUTPUT -m conntrack --ctstate NEW -j ACCEPT "
             "&& ip route add default dev lo")
    netns.sh("python3 -c '"
             "import socket\n"
             "for address, port, kind in ((\"10.96.0.10\", 53, socket.SOCK_DGRAM), (\"10.97.1.1\", 53, "
             "socket.SOCK_DGRAM), (\"192.0.2.9\", 53, socket.SOCK_DGRAM)):\n"
             "    s = socket.socket(socket.AF_INET, kind); s.sendto(b\"q\", (address, port))\n"
             "'")


def test_deletes_only_udp_flows_to_the_networks(netns):
    make_flows(netns)
    before = flows(netns)
    assert all(any(f"dst={address}" in line for line in before) for address in ("10.96.0.10", "10.97.1.1", "192.0.2.9"))

    checked = netns.module("conntrack_flows", check_mode=True, diff=True, destinations=["10.96.0.0/12"])
    assert checked["changed"] and checked["deleted"] == {"10.96.0.0/12": 2}, checked
    assert flows(netns) == before, "check mode deleted entries"

    tcp = netns.module("conntrack_flows", destinations=["10.96.0.0/12"], protocol="tcp")
    assert not tcp["changed"] and tcp["deleted"] == {"10.96.0.0/12": 0}, tcp

    applied = netns.module("conntrack_flows", destinations=["10.96.0.0/12", "fd00:10:96::/112"])
    assert applied["changed"] and applied["deleted"] == {"10.96.0.0/12": 2, "fd00:10:96::/112": 0}, applied
    after = " ".join(flows(netns))
    assert "dst=10.96.0.10" not in after and "dst=10.97.1.1" not in after
    assert "dst=192.0.2.9" in after, "a flow outside the networks went"

    again = netns.module("conntrack_flows", destinations=["10.96.0.0/12"])
    assert not again["changed"], again


def test_bad_destination_fails_before_anything(netns):
    make_flows(netns)
    before = flows(netns)
    result = netns.module("conntrack_flows", destinations=["10.96.0.0/12", "10.96.0.300/12"])
    assert result["failed"] and "destinations: '10.96.0.300/12' is not a network" in result["msg"], result
    assert flows(netns) == before
    empty = netns.module("conntrack_flows", destinations=[])
    assert empty["failed"] and "at least one network" in empty["msg"], empty
