#!/usr/bin/env bash
# A client outside the node, on a lab node: the network namespace "outside" with a macvlan of the
# lab NIC eth1 at 192.168.200.(100+N). Its packets go onto the lab network without passing through
# this node's own netfilter or kube-proxy, so they reach another node as a machine outside the
# cluster sends them - the way in to externalIPs and load-balancer IPs with
# externalTrafficPolicy: Local.
#
# usage: outside.sh start VIA CIDR...   (the namespace; each CIDR routed via 192.168.200.VIA)
#        outside.sh stop                (the namespace and its link deleted)
set -euo pipefail
ns=outside
n=$(hostname)
n=${n#node}

# A namespace outlives `ip netns del` while a process runs in it (a canary an interrupted run left):
# those go first, by their PIDs.
remove() {
  local pids
  pids=$(ip netns pids "$ns" 2>/dev/null || true)
  # shellcheck disable=SC2086  # one PID per word
  [ -z "$pids" ] || kill $pids 2>/dev/null || true
  for _ in $(seq 1 50); do
    [ -z "$(ip netns pids "$ns" 2>/dev/null || true)" ] && break
    sleep 0.1
  done
  ip netns del "$ns" 2>/dev/null || true
}

case "${1:?start VIA CIDR... | stop}" in
  start)
    via=${2:?VIA}
    shift 2
    remove
    modprobe macvlan
    ip netns add "$ns"
    ip link add link eth1 name outside0 type macvlan mode bridge
    ip link set outside0 netns "$ns"
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "192.168.200.$((100 + n))/24" dev outside0
    ip -n "$ns" link set outside0 up
    for cidr in "$@"; do
      ip -n "$ns" route add "$cidr" via "192.168.200.$via"
    done
    ;;
  stop)
    remove
    ;;
esac
