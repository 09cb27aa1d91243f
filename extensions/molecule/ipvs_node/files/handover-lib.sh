#!/usr/bin/env bash
# The ipvs_node scenario's handover steps (tasks/handover.yml), sourced on a lab node.
# What a node in IPVS mode holds, normalised: ipset's random initval dropped; the rules of the
# built-in chains compared as a set (kube-proxy only checks that its jumps exist, so their
# order is the node's history); iptables mode's jumps into KUBE-PROXY-FIREWALL ("kubernetes load
# balancer firewall"), which kube-proxy leaves behind when a node moves from iptables mode and
# proxy_cleanup removes, left out (IPVS mode's own jumps into it, "kube-proxy firewall rules", stay).
dump() {
  ipvsadm -Sn | LC_ALL=C sort | sed 's/^/ipvs /'
  ipset save | grep -E '^(create|add) KUBE-' | sed -E 's/ initval 0x[0-9a-f]+//' \
    | LC_ALL=C sort | sed 's/^/ipset /'
  for tool in iptables-save ip6tables-save; do
    $tool | grep -v -- '--comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL' | awk -v tool="$tool" '
      /^\*/ { table = substr($0, 2); next }
      /^(#|COMMIT)/ { next }
      /^:/ { sub(/ \[[0-9]+:[0-9]+\]$/, ""); print tool, table, ":", 0, $0; next }
      { builtin = $2 ~ /^(INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING)$/
        print tool, table, $2, (builtin ? 0 : NR), $0 }' \
      | LC_ALL=C sort -k1,3 -k4,4n -k5 | cut -d' ' -f1,2,5-
  done
  # the link's index and random MAC address dropped; its addresses with their scope and flags
  ip -d -o link show dev kube-ipvs0 | sed -E 's/^[0-9]+: /link /; s/link\/ether [0-9a-f:]+/link\/ether/'
  ip -o addr show dev kube-ipvs0 | sed -E 's/^[0-9]+: +/addr /; s/\\? +valid_lft.*//' | LC_ALL=C sort
  # a sysctl its module is not loaded for reads "absent"
  for key in net/ipv4/vs/conntrack net/ipv4/vs/expire_nodest_conn net/ipv4/vs/expire_quiescent_template \
             net/ipv4/vs/conn_reuse_mode net/ipv4/ip_forward net/ipv4/conf/all/arp_ignore \
             net/ipv4/conf/all/arp_announce net/ipv4/conf/all/route_localnet net/bridge/bridge-nf-call-iptables; do
    echo "sysctl ${key//\//.}=$(cat "/proc/sys/$key" 2>/dev/null || echo absent)"
  done
  # the modules loaded since the node was first made bare: what kube-proxy, or the collection,
  # loaded from nothing
  comm -13 "$HANDOVER/modules-bare" <(loaded_modules) | sed 's/^/module /'
}
HANDOVER=/run/kubeipvs-handover
loaded_modules() { cut -d' ' -f1 /proc/modules | LC_ALL=C sort; }
# kube-proxy's IPVS mode's modules, and what its objects load: IPVS and its schedulers, ipset's set
# types and iptables' set match, the dummy link's driver, and br_netfilter (which it only reads);
# and IPVS's iptables match (xt_ipvs), which holds ip_vs once anything used it.
KUBE_PROXY_MODULES='^(ip_vs(_[a-z]+)?|xt_ipvs|ip_set_(hash|bitmap|list)_[a-z]+|xt_set|dummy|br_netfilter)$'
# Unload what nothing holds any more: kube-proxy's modules and, once the bare node's list is taken,
# whatever was loaded since; in rounds, as each module that goes frees the ones it held. A module
# still in use (by a foreign object) stays, and is then in both dumps alike.
unload_modules() {
  local module removed=1
  while [[ $removed == 1 ]]; do
    removed=0
    while read -r module refs; do
      [[ $refs == 0 ]] || continue
      if [[ $module =~ $KUBE_PROXY_MODULES ]] \
         || { [[ -e $HANDOVER/modules-bare ]] && ! grep -qx "$module" "$HANDOVER/modules-bare"; }; then
        rmmod "$module" 2>/dev/null && removed=1
      fi
    done < <(awk '{print $1, $3}' /proc/modules)
  done
  [[ -e $HANDOVER/modules-bare ]] || loaded_modules > "$HANDOVER/modules-bare"
  if [[ -d /sys/module/ip_vs ]]; then
    echo "ip_vs is still loaded on the bare node: $(cut -d' ' -f1,3,4 /proc/modules | grep '^ip_vs')" >&2; return 1
  fi
}
# The foreign IPVS services (all that proxy_cleanup leaves) hold ip_vs: set aside, once, so that the
# bare node has no IPVS module; put back after the handover.
set_foreign_ipvs_aside() {
  [[ -e $HANDOVER/foreign-ipvs ]] || ipvsadm -Sn > "$HANDOVER/foreign-ipvs"
  ipvsadm -C
}
restore_foreign_ipvs() {
  [[ -e $HANDOVER/foreign-ipvs ]] || return 0
  ipvsadm -R < "$HANDOVER/foreign-ipvs"
  rm "$HANDOVER/foreign-ipvs"
}
# What kube-proxy's IPVS mode sets (pkg/proxy/ipvs: vs/conntrack, expire_nodest_conn,
# expire_quiescent_template, ip_forward), what its iptables mode set before (route_localnet)
# and what only the collection sets (bridge-nf-call-iptables), back to the kernel's defaults (a
# module's own sysctls go with it, and come back at their defaults).
reset_sysctls() {
  for key in net/ipv4/vs/conntrack net/ipv4/vs/expire_nodest_conn net/ipv4/vs/expire_quiescent_template \
             net/ipv4/ip_forward net/ipv4/conf/all/route_localnet net/bridge/bridge-nf-call-iptables; do
    if [[ -e /proc/sys/$key ]]; then echo 0 > "/proc/sys/$key"; fi
  done
}
stop_kube_proxy() {
  systemctl stop kubeipvs-podrunner
  for _ in $(seq 60); do pgrep -x kube-proxy >/dev/null || return 0; sleep 1; done
  echo "kube-proxy still runs after its runner stopped" >&2; return 1
}
# Until the node stops changing: three dumps 2 s apart alike (kube-proxy syncs again as more of the
# cluster reaches it after its first sync).
settle() {
  local last current same=0
  last=$(dump)
  for _ in $(seq 60); do
    sleep 2
    current=$(dump)
    if [[ $current == "$last" ]]; then same=$((same + 1)); else same=0; fi
    [[ $same -ge 3 ]] && return 0
    last=$current
  done
  echo "kube-proxy kept changing the node for 2 minutes after its first sync" >&2; return 1
}
# Its first sync done: /healthz answers 200 and the sync counter of the new process moved; then
# the node settled.
start_kube_proxy() {
  systemctl start kubeipvs-podrunner
  for _ in $(seq 150); do
    counts=$(curl -fsS -m 2 http://127.0.0.1:10249/metrics 2>/dev/null \
      | awk '/^kubeproxy_sync_proxy_rules_duration_seconds_count[ {]/ {print $NF}' || true)
    # one count per family's proxier, none of them still 0
    if [[ -n $counts ]] && ! grep -qx 0 <<< "$counts" \
       && curl -fsS -m 2 -o /dev/null http://127.0.0.1:10256/healthz; then
      settle
      return
    fi
    sleep 2
  done
  echo "kube-proxy did not finish a sync within 5 minutes of its start" >&2; return 1
}
