#!/usr/bin/env bash
# The lab's pods: on a lab node, a network namespace on the node's pod bridge cbr0 (10.244.N.0/24,
# fd00:10:244:N::/64, routed between the nodes) running a small server that answers with its name:
# HTTP on 8080 and a DNS-like UDP echo on 5353 (the name, then the query). Kubernetes Services point at them through
# EndpointSlices, so requests through kube-proxy show which endpoint answered.
#
# usage: pod.sh start NAME INDEX   (pod NAME at 10.244.N.INDEX and fd00:10:244:N::INDEX; N from the node's name)
#        pod.sh stop-all           (every pod of this script, by its PID; namespaces and links deleted)
set -euo pipefail

state=/run/kubeipvs-lab-pods
node=$(hostname)
n=${node#node}

start() {
  local name=$1 index=$2 ns=pod-$1 pidfile=$state/$1.pid
  mkdir -p "$state"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "unchanged $name"
    return
  fi
  ip netns del "$ns" 2>/dev/null || true
  ip link del "veth-$name" 2>/dev/null || true
  ip netns add "$ns"
  ip link add "veth-$name" type veth peer name eth0 netns "$ns"
  ip link set "veth-$name" master cbr0 up
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "10.244.$n.$index/24" dev eth0
  ip -n "$ns" addr add "fd00:10:244:$n::$index/64" dev eth0 nodad
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route add default via "10.244.$n.1"
  ip -n "$ns" -6 route add default via "fd00:10:244:$n::1"
  cat >"$state/server.py" <<'PY'
# One thread and one selector for every connection and datagram: a thread per connection and
# http.server's header parsing cost each canary pod about a third of a TCG node's CPU.
import selectors, socket, sys
answer = sys.argv[1].encode() + b"\n"
http_port = int(sys.argv[2]) if len(sys.argv) > 2 else 8080  # the ports: for a test off the lab
udp_port = int(sys.argv[3]) if len(sys.argv) > 3 else 5353
response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer)
def dual_stack(kind, port):
    sock = socket.socket(socket.AF_INET6, kind)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("::", port))
    sock.setblocking(False)
    return sock
listener, udp = dual_stack(socket.SOCK_STREAM, http_port), dual_stack(socket.SOCK_DGRAM, udp_port)
listener.listen(128)
selector = selectors.DefaultSelector()
selector.register(listener, selectors.EVENT_READ)
selector.register(udp, selectors.EVENT_READ)
pending = {}  # connection: what it sent after its last complete request (keep-alive: many per connection)
def close(connection):
    selector.unregister(connection)
    pending.pop(connection, None)
    connection.close()
while True:
    for key, _ in selector.select():
        sock = key.fileobj
        if sock is listener:
            try:
                connection, _ = listener.accept()
            except OSError:
                continue
            connection.setblocking(False)
            selector.register(connection, selectors.EVENT_READ)
            pending[connection] = b""
        elif sock is udp:  # the name, then the query itself: as DNS repeats the query's ID
            try:
                query, client = udp.recvfrom(512)
                udp.sendto(answer + query, client)
            except OSError:
                pass
        else:
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            if not data:
                close(sock)
                continue
            data = pending[sock] + data
            try:
                while b"\r\n\r\n" in data:  # a GET has no body: each blank line ends one request
                    data = data.split(b"\r\n\r\n", 1)[1]
                    sock.sendall(response)  # a few dozen bytes: the socket's buffer takes them at once
            except OSError:
                close(sock)
                continue
            pending[sock] = data[-65536:]
PY
  ip netns exec "$ns" setsid python3 "$state/server.py" "$node/$name" </dev/null >/dev/null 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 1 150); do
    curl -fsS -m 2 "http://10.244.$n.$index:8080/" >/dev/null 2>&1 && { echo "started $name"; return; }
    sleep 0.2
  done
  echo "pod $name did not answer" >&2
  exit 1
}

stop_all() {
  for pidfile in "$state"/*.pid; do
    [ -f "$pidfile" ] || continue
    name=$(basename "$pidfile" .pid)
    kill "$(cat "$pidfile")" 2>/dev/null || true
    # the veth's node end first: both ends go at once, not whenever the namespace is freed
    ip link del "veth-$name" 2>/dev/null || true
    ip netns del "pod-$name" 2>/dev/null || true
    rm -f "$pidfile"
    echo "stopped $name"
  done
}

case ${1:-} in
  start) start "$2" "$3" ;;
  stop-all) stop_all ;;
  *) echo "usage: $0 start NAME INDEX | stop-all" >&2; exit 2 ;;
esac
