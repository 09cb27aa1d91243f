#!/usr/bin/env bash
# Plant kube-proxy leftovers of all three modes plus foreign and kubelet objects (prepare step).
# Prints changed=yes when it planted anything; a second run on a planted node changes nothing.
set -euo pipefail
if iptables -t nat -S KUBE-SVC-PCLEANUPAAAAAAAA >/dev/null 2>&1; then
  echo "changed=no"
  exit 0
fi
modprobe ip_vs
modprobe dummy

# ipvs mode: kube-ipvs0 with the ClusterIPs, services in the scope, the sets its rules match.
ip link add kube-ipvs0 type dummy
ip addr add 10.96.0.1/32 dev kube-ipvs0
ip addr add 10.96.0.10/32 dev kube-ipvs0
ipvsadm -A -t 10.96.0.1:443 -s rr
ipvsadm -a -t 10.96.0.1:443 -r 10.0.2.15:6443 -m -w 1
ipvsadm -A -u 10.96.0.10:53 -s rr
ipvsadm -A -t 10.97.5.5:80 -s rr   # in the scope's CIDR, not on the link
ipset create KUBE-CLUSTER-IP hash:ip,port
ipset add KUBE-CLUSTER-IP 10.96.0.1,tcp:443
ipset create KUBE-LOOP-BACK hash:ip,port,ip
ipset create KUBE-NODE-PORT-TCP bitmap:port range 0-65535
ipset create KUBE-NODE-PORT-SCTP hash:ip,port   # a legacy name
ipset create KUBE-6-CLUSTER-IP hash:ip,port family inet6
ipset create KUBE-6-LOAD-BALANCER-SOURCE-CID hash:ip,port,net family inet6   # cut to 31 characters

# Foreign objects: must survive every cleanup.
ipvsadm -A -t 192.0.2.50:80 -s rr
ipvsadm -a -t 192.0.2.50:80 -r 192.0.2.51:80 -m -w 1
ipset create FOREIGN-SET hash:ip
ipset add FOREIGN-SET 192.0.2.10
nft add table ip foreign-table
nft add chain ip foreign-table foreign-chain

# nftables mode.
nft add table ip kube-proxy
nft add chain ip kube-proxy services
nft add table ip6 kube-proxy
nft add chain ip6 kube-proxy services

# iptables: both kube-proxy modes in the same tables (nat KUBE-SERVICES holds rules of both), the
# iptables-mode chains, kubelet's chains, and a foreign chain.
iptables-restore --noflush <<'RULES'
*nat
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-LOAD-BALANCER - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-SVC-PCLEANUPAAAAAAAA - [0:0]
:KUBE-SEP-PCLEANUPBBBBBBBB - [0:0]
:KUBE-EXT-PCLEANUPCCCCCCCC - [0:0]
:KUBE-XLB-PCLEANUPDDDDDDDD - [0:0]
:KUBE-PROXY-CANARY - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:FOREIGN-CHAIN - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A POSTROUTING -j FOREIGN-CHAIN
-A KUBE-SERVICES -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" -m set --match-set KUBE-CLUSTER-IP src,dst -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT
-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 443 -j KUBE-SVC-PCLEANUPAAAAAAAA
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-SVC-PCLEANUPAAAAAAAA -j KUBE-SEP-PCLEANUPBBBBBBBB
-A KUBE-SEP-PCLEANUPBBBBBBBB -s 10.0.2.15/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-PCLEANUPBBBBBBBB -p tcp -m tcp -j DNAT --to-destination 10.0.2.15:6443
-A KUBE-EXT-PCLEANUPCCCCCCCC -j KUBE-SVC-PCLEANUPAAAAAAAA
-A KUBE-NODE-PORT -p tcp -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ
-A KUBE-POSTROUTING -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A FOREIGN-CHAIN -m set --match-set FOREIGN-SET dst -j RETURN
-A FOREIGN-CHAIN -d 192.0.2.0/24 -j RETURN
COMMIT
*filter
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-PROXY-CANARY - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-IPVS-FILTER - [0:0]
:KUBE-IPVS-OUT-FILTER - [0:0]
:KUBE-SOURCE-RANGES-FIREWALL - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:FOREIGN-CHAIN - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
-A INPUT -m comment --comment "kubernetes health check rules" -j KUBE-NODE-PORT
-A INPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-FILTER
-A INPUT -j KUBE-FIREWALL
-A INPUT -j FOREIGN-CHAIN
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-OUT-FILTER
-A OUTPUT -j KUBE-FIREWALL
-A KUBE-SERVICES -d 10.96.0.99/32 -p tcp -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable
-A KUBE-FORWARD -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-IPVS-FILTER -m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A FOREIGN-CHAIN -s 192.0.2.0/24 -j RETURN
COMMIT
*mangle
:KUBE-PROXY-CANARY - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
RULES

ip6tables-restore --noflush <<'RULES'
*nat
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-SERVICES -m set --match-set KUBE-6-CLUSTER-IP dst,dst -j ACCEPT
-A KUBE-SERVICES -m set --match-set KUBE-6-LOAD-BALANCER-SOURCE-CID dst,dst,src -j ACCEPT
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
COMMIT
RULES
echo "changed=yes"
