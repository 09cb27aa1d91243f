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
import socket, socketserver, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
answer = sys.argv[1].encode() + b"\n"
class Http(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a connection can stay open across many requests
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
    def log_message(self, *args):
        pass
class DualStack(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
class Echo(socketserver.BaseRequestHandler):
    def handle(self):  # the name, then the query itself: as DNS repeats the query's ID
        self.request[1].sendto(answer + self.request[0], self.client_address)
class UdpDualStack(socketserver.ThreadingUDPServer):
    address_family = socket.AF_INET6
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
threading.Thread(target=UdpDualStack(("::", 5353), Echo).serve_forever, daemon=True).start()
DualStack(("::", 8080), Http).serve_forever()
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
