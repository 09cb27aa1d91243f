#!/usr/bin/env bash
# Canary traffic on a lab node (make demo, molecule mode_switch): start | stop | count. start runs
# one HTTP request to the URL every 0.2 s in the background (its PID in /run/kubeipvs-canary/pid)
# and logs each result; stop ends it by that PID; count prints the counts and the failures' times
# as JSON.
set -euo pipefail
dir=/run/kubeipvs-canary
case "${1:?start URL | stop | count}" in
  start)
    url=${2:?URL}
    mkdir -p "$dir"
    if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then exit 0; fi
    : >"$dir/log"
    # One Python process makes every request (a new TCP connection each, 2 s timeout): a curl
    # forked five times a second cost a TCG node half a CPU and slowed every task on it.
    # nohup: the SSH session that starts it may end before setsid has made it a session of its
    # own, and its SIGHUP must not kill the loop (seen on a loaded lab host).
    nohup setsid python3 -u -c '
import sys, time, urllib.request
while True:
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=2) as answer:
            answer.read()
        print("ok")
    except Exception:
        now = time.time()
        print("failed", time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}")
    time.sleep(0.2)
' "$url" >>"$dir/log" 2>/dev/null </dev/null &
    echo $! >"$dir/pid"
    for _ in $(seq 1 100); do [ -s "$dir/log" ] && exit 0; sleep 0.1; done
    echo "the canary loop wrote nothing in 10 s" >&2
    exit 1
    ;;
  stop)
    if [ -f "$dir/pid" ]; then
      kill -- "-$(cat "$dir/pid")" 2>/dev/null || true
      rm -f "$dir/pid"
    fi
    ;;
  count)
    # {"ok": N, "failed": M, "failures": ["HH:MM:SS.N", ...]} - read with from_json
    ok=$(grep -c '^ok' "$dir/log" || true)
    failures=$(grep '^failed' "$dir/log" | head -20 | awk '{print "\"" $2 "\""}' | paste -sd, - || true)
    echo "{\"ok\": $ok, \"failed\": $(grep -c '^failed' "$dir/log" || true), \"failures\": [$failures]}"
    ;;
esac
