#!/usr/bin/env bash
# Traffic proof of the masquerade baseline on the node (run by verify.yml; cleans up after itself).
#   ns A (10.200.1.2, 10.200.1.3) --veth-- node --veth-- ns B (10.200.2.2, TCP server on 8080)
# 1. A -> B from 10.200.1.2: the test chain jumps to KUBE-MARK-MASQ, so KUBE-POSTROUTING
#    masquerades it and B's server sees the node's address 10.200.2.1.
# 2. A -> B from 10.200.1.3: not marked, B sees 10.200.1.3 (the mark gates masquerading).
# 3. Hairpin: B -> VIP 198.18.0.10:80, an IPVS NAT service whose only real server is B itself.
#    Without a KUBE-LOOP-BACK entry the connection fails (B drops a SYN from its own address);
#    with the entry (dst ip, dst port, src ip) KUBE-POSTROUTING masquerades it and B sees 10.200.2.1.
# Prints key=value lines; exits non-zero only when the set-up itself fails.
set -euo pipefail
A=kipvs-mq-a
B=kipvs-mq-b
VIP=198.18.0.10
DUMMY=kipvs-mq-vip
LOOP_BACK_ENTRY=10.200.2.2,tcp:8080,10.200.2.2
SERVER_PID=

modprobe -a ip_vs ip_vs_rr dummy
forward_before=$(sysctl -n net.ipv4.ip_forward)
vs_conntrack_before=$(sysctl -n net.ipv4.vs.conntrack)

cleanup() {
    set +e
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null
    ipvsadm -D -t "$VIP:80" 2>/dev/null
    ip link del "$DUMMY" 2>/dev/null
    ip link del kipvs-mq-a1 2>/dev/null
    ip link del kipvs-mq-b1 2>/dev/null
    ip netns del "$A" 2>/dev/null
    ip netns del "$B" 2>/dev/null
    ipset del KUBE-LOOP-BACK "$LOOP_BACK_ENTRY" 2>/dev/null
    rm -f /run/kipvs-mq-peers.log
    sysctl -qw net.ipv4.ip_forward="$forward_before" net.ipv4.vs.conntrack="$vs_conntrack_before"
}
trap cleanup EXIT
cleanup
trap cleanup EXIT

ip netns add "$A"
ip netns add "$B"
ip link add kipvs-mq-a1 type veth peer name a0 netns "$A"
ip link add kipvs-mq-b1 type veth peer name b0 netns "$B"
ip addr add 10.200.1.1/24 dev kipvs-mq-a1
ip addr add 10.200.2.1/24 dev kipvs-mq-b1
ip link set kipvs-mq-a1 up
ip link set kipvs-mq-b1 up
ip -n "$A" addr add 10.200.1.2/24 dev a0
ip -n "$A" addr add 10.200.1.3/24 dev a0
ip -n "$B" addr add 10.200.2.2/24 dev b0
for ns in "$A" "$B"; do ip -n "$ns" link set lo up; done
ip -n "$A" link set a0 up
ip -n "$B" link set b0 up
ip -n "$A" route add default via 10.200.1.1
ip -n "$B" route add default via 10.200.2.1
sysctl -qw net.ipv4.ip_forward=1 net.ipv4.vs.conntrack=1

# B's server logs every peer address and tells it to the client.
ip netns exec "$B" python3 -c '
import socket
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", 8080))
server.listen(16)
while True:
    conn, peer = server.accept()
    with open("/run/kipvs-mq-peers.log", "a") as log:
        log.write(peer[0] + "\n")
    conn.sendall((peer[0] + "\n").encode())
    conn.close()
' &
SERVER_PID=$!

# client NS HOST PORT SOURCE: prints the peer address the server saw, or "failed".
client() {
    ip netns exec "$1" python3 -c '
import socket, sys
try:
    conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3, source_address=(sys.argv[3], 0))
    print(conn.recv(100).decode().strip() or "failed")
except OSError:
    print("failed")
' "$2" "$3" "$4"
}

for _ in $(seq 50); do
    ip netns exec "$B" python3 -c 'import socket; socket.create_connection(("127.0.0.1", 8080), timeout=1)' \
        2>/dev/null && break
    sleep 0.2
done

echo "marked_peer=$(client "$A" 10.200.2.2 8080 10.200.1.2)"
echo "unmarked_peer=$(client "$A" 10.200.2.2 8080 10.200.1.3)"

ip link add "$DUMMY" type dummy
ip addr add "$VIP/32" dev "$DUMMY"
ipvsadm -A -t "$VIP:80" -s rr
ipvsadm -a -t "$VIP:80" -r 10.200.2.2:8080 -m
echo "hairpin_without_loop_back_entry=$(client "$B" "$VIP" 80 10.200.2.2)"
ipset add KUBE-LOOP-BACK "$LOOP_BACK_ENTRY"
echo "hairpin_peer=$(client "$B" "$VIP" 80 10.200.2.2)"
echo "server_log=$(tr '\n' ' ' < /run/kipvs-mq-peers.log)"
