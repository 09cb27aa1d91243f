#!/usr/bin/env bash
# Canary traffic on a lab node (make demo, molecule mode_switch), counted while a switch runs.
#
# usage: canary.sh start NAME KIND TARGET   start canary NAME in the background (PID in
#                                           /run/kubeipvs-canary/NAME.pid), logging each result
#        canary.sh stop                     stop every canary by its PID
#        canary.sh mark STEP                every canary's results from now on count for STEP
#        canary.sh count NAME               {"ok": N, "slow": S, "resent": R, "failed": M, "failures": [...], "resends": [...],
#                                           "steps": [{"step": STEP, "ok": .., "slow": .., "resent": .., "failed": ..}]}
#                                           as JSON (results before the first mark: step "start")
# KIND:
#   http URL          a new TCP connection and one GET every 0.5 s
#   hold URL          one HTTP/1.1 keep-alive connection kept open, a GET on it every 0.5 s; a
#                     request that fails or a connection that breaks is a failure (it reconnects)
#   udp HOST:PORT     a DNS-like UDP query every 0.5 s from one fixed source port, sent again after
#                     each second without its answer, as a resolver does: a query answered only
#                     when sent again is "resent" (one datagram lost), one still unanswered after
#                     5 s failed - as a stale conntrack entry after a switch makes every one fail
# A request fails when it gets an error or no answer within 5 s; an answer after more than 1 s
# counts as slow (a lost packet resent, or a TCG node starved of CPU - the log has each one's time).
# One Python process per canary (a curl forked five times a second cost a TCG node half a CPU).
# Every kind asks twice a second: a connection every 0.2 s made each node's five canaries and the
# pods answering them cost the lab host 30% of a core per node, 15% at 0.5 s (measured on an
# idle three-node lab), time the lab's Ansible tasks then waited for.
set -euo pipefail
dir=${KUBEIPVS_CANARY_DIR:-/run/kubeipvs-canary}

case "${1:?start NAME KIND TARGET | stop | count NAME}" in
  start)
    name=${2:?NAME} kind=${3:?KIND} target=${4:?TARGET}
    mkdir -p "$dir"
    if [ -f "$dir/$name.pid" ] && kill -0 "$(cat "$dir/$name.pid")" 2>/dev/null; then exit 0; fi
    : >"$dir/$name.log"
    # nohup: the SSH session that starts it may end before setsid has made it a session of its
    # own, and its SIGHUP must not kill the loop (seen on a loaded lab host).
    nohup setsid python3 -u -c '
import socket, sys, time, urllib.parse

kind, target = sys.argv[1], sys.argv[2]

def stamp():
    now = time.time()
    return time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"

TIMEOUT = 5

def report(started):
    took = time.monotonic() - started
    print("ok" if took <= 1 else f"slow {stamp()} {took:.1f}s", flush=True)

# HTTP by hand on a plain socket (urllib and http.client cost a TCG node several times more CPU):
# a request, then the status line, headers and the Content-Length bytes of the body.
url = urllib.parse.urlsplit(target)
ADDRESS = (url.hostname, url.port or 80)
PATH = url.path or "/"
REQUEST = f"GET {PATH} HTTP/1.1\r\nHost: {url.netloc}\r\n\r\n".encode()

class Broken(Exception):
    """The answer was not a 200 with its whole body, or the connection ended first."""

def exchange(sock):
    sock.sendall(REQUEST)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise Broken("closed before the headers")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    if lines[0].split(b" ")[1:2] != [b"200"]:
        raise Broken(lines[0].decode(errors="replace"))
    length = next((int(line.split(b":", 1)[1]) for line in lines[1:] if line.lower().startswith(b"content-length:")), None)
    if length is None:
        raise Broken("no Content-Length")
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            raise Broken("closed before the body")
        body += chunk

def http_once():
    with socket.create_connection(ADDRESS, timeout=TIMEOUT) as sock:
        exchange(sock)

def hold():
    connection = None
    while True:
        try:
            started = time.monotonic()
            if connection is None:
                connection = socket.create_connection(ADDRESS, timeout=TIMEOUT)
            exchange(connection)
            report(started)
        except Exception as error:
            print("failed", stamp(), type(error).__name__, flush=True)
            if connection is not None:
                connection.close()
            connection = None
        time.sleep(0.5)

RESEND = 1  # a resolver sends its query again after this long without an answer

def answered(sock, query, deadline):
    """Whether the answer to query came before deadline (late answers to earlier queries skipped)."""
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if sock.recv(512).endswith(query):
                return True
        except TimeoutError:
            return False
    return False

def udp():
    host, port = target.rsplit(":", 1)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    address = (host.strip("[]"), int(port))
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind(("", 0))  # one source port for the whole run, as a long-lived resolver
    number = 0
    while True:
        number += 1
        query = b"query %d" % number
        started = time.monotonic()
        try:
            for sends in range(1, TIMEOUT // RESEND + 1):
                sock.sendto(query, address)
                if answered(sock, query, started + sends * RESEND):
                    break
            else:
                raise TimeoutError
            if sends == 1:
                report(started)
            else:
                print("resent", stamp(), f"{time.monotonic() - started:.1f}s", sends - 1, flush=True)
        except OSError as error:
            print("failed", stamp(), type(error).__name__, flush=True)
        time.sleep(0.5)

if kind == "hold":
    hold()
elif kind == "udp":
    udp()
else:
    while True:
        try:
            started = time.monotonic()
            http_once()
            report(started)
        except Exception as error:
            print("failed", stamp(), type(error).__name__, flush=True)
        time.sleep(0.5)
' "$kind" "$target" >>"$dir/$name.log" 2>/dev/null </dev/null &
    echo $! >"$dir/$name.pid"
    for _ in $(seq 1 100); do [ -s "$dir/$name.log" ] && exit 0; sleep 0.1; done
    echo "canary $name wrote nothing in 10 s" >&2
    exit 1
    ;;
  stop)
    for pidfile in "$dir"/*.pid; do
      [ -f "$pidfile" ] || continue
      kill -- "-$(cat "$pidfile")" 2>/dev/null || true
      rm -f "$pidfile"
    done
    ;;
  mark)
    step=${2:?STEP}
    [[ $step =~ ^[a-z0-9][a-z0-9-]*$ ]] || { echo "STEP: lower-case letters, digits and dashes" >&2; exit 2; }
    for log in "$dir"/*.log; do
      [ -f "$log" ] && echo "mark $step" >>"$log"
    done
    ;;
  count)
    name=${2:?NAME}
    log=$dir/$name.log
    ok=$(grep -c '^ok' "$log" || true)
    slow=$(grep -c '^slow' "$log" || true)
    resent=$(grep -c '^resent' "$log" || true)
    failures=$(grep '^failed' "$log" | head -20 | awk '{print "\"" $2 " " $3 "\""}' | paste -sd, - || true)
    resends=$(grep '^resent' "$log" | head -20 | awk '{print "\"" $2 "\""}' | paste -sd, - || true)
    steps=$(awk '
      function emit() { if (n++) printf ","; printf "{\"step\": \"%s\", \"ok\": %d, \"slow\": %d, \"resent\": %d, \"failed\": %d}", step, c["ok"], c["slow"], c["resent"], c["failed"] }
      BEGIN { step = "start" }
      $1 == "mark" { emit(); step = $2; delete c; next }
      { c[$1]++ }
      END { emit() }' "$log")
    echo "{\"ok\": $ok, \"slow\": $slow, \"resent\": $resent, \"failed\": $(grep -c '^failed' "$log" || true), \"failures\": [$failures], \"resends\": [$resends], \"steps\": [$steps]}"
    ;;
esac
