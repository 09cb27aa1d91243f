#!/usr/bin/env bash
# Canary traffic on a lab node: start | stop | count. start runs one request to the URL every
# 0.2 s in the background (its PID in /run/kubeipvs-canary/pid) and logs each result; stop ends
# it by that PID; count prints "ok=N failed=M" and the failures' times.
set -euo pipefail
dir=/run/kubeipvs-canary
case "${1:?start URL | stop | count}" in
  start)
    url=${2:?URL}
    mkdir -p "$dir"
    if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then exit 0; fi
    : >"$dir/log"
    setsid bash -c "while :; do
        if curl -fsS -m 2 -o /dev/null '$url'; then echo ok; else echo \"failed \$(date +%T.%N)\"; fi
        sleep 0.2
      done" >>"$dir/log" 2>/dev/null </dev/null &
    echo $! >"$dir/pid"
    ;;
  stop)
    if [ -f "$dir/pid" ]; then
      kill -- "-$(cat "$dir/pid")" 2>/dev/null || true
      rm -f "$dir/pid"
    fi
    ;;
  count)
    echo "ok=$(grep -c '^ok' "$dir/log" || true) failed=$(grep -c '^failed' "$dir/log" || true)"
    grep '^failed' "$dir/log" | head -20 || true
    ;;
esac
