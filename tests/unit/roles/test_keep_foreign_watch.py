"""The mode_switch role's foreign-IPVS watch program, against an ipvsadm stand-in that keeps its
table in a file: when it restores, what it leaves alone. (That kube-proxy's real flush is undone on
a real kernel is proven by the mode_switch scenario.)"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

PROGRAM = Path(__file__).resolve().parents[3] / "roles/mode_switch/files/kubeipvs-keep-foreign-ipvs"

# `ipvsadm -S -n` prints the table file, `ipvsadm -L -n -t VIP:PORT` fails when that service is not
# in it, `ipvsadm -R` adds the lines it reads, refusing a service that exists already, as the real one does.
IPVSADM = r"""#!/bin/sh
table=$IPVSADM_TABLE
case "$1" in
  -S) cat "$table" ;;
  -L)  # -L -n -t VIP:PORT: that service, or "No such service"
    awk -v key="$3 $4" '$1 == "-A" && ($2 " " $3) == key { found = 1 } END { exit !found }' "$table" && exit 0
    echo "No such service" >&2
    exit 1 ;;
  -R)
    while IFS= read -r line; do
      set -- $line
      if [ "$1" = "-A" ] && awk -v key="$2 $3" '$1 == "-A" && ($2 " " $3) == key { found = 1 } END { exit !found }' "$table"; then
        echo "Service already exists" >&2
        exit 1
      fi
      echo "$line" >> "$table"
    done ;;
  *) exit 2 ;;
esac
"""

# systemd-run logs its arguments and fails when SYSTEMD_RUN_FAILS is set, starting nothing.
SYSTEMD_RUN = r"""#!/bin/sh
echo "$*" >> "$SYSTEMD_RUN_LOG"
[ -z "${SYSTEMD_RUN_FAILS:-}" ]
"""

KEEPALIVED = [
    "-A -t 192.0.2.50:80 -s wlc",
    "-a -t 192.0.2.50:80 -r 10.244.1.10:8080 -m -w 1",
    "-A -u [2001:db8::5]:53 -s rr -p 300",
    "-a -u [2001:db8::5]:53 -r [2001:db8:1::10]:53 -m -w 3",
    "-A -f 7 -s rr",
]
KUBE = ["-A -t 10.96.0.1:443 -s rr", "-a -t 10.96.0.1:443 -r 192.168.200.1:6443 -m -w 1"]


@pytest.fixture
def node(tmp_path):
    tools = tmp_path / "bin"
    tools.mkdir()
    for name, text in (("ipvsadm", IPVSADM), ("systemd-run", SYSTEMD_RUN), ("systemctl", "#!/bin/sh\nexit 0\n")):
        (tools / name).write_text(text)
        (tools / name).chmod(0o755)
    table = tmp_path / "table"
    rules = tmp_path / "foreign-ipvs.rules"
    (tmp_path / "expire_nodest_conn").write_text("1\n")  # net.ipv4.vs.expire_nodest_conn as kube-proxy sets it
    env = dict(os.environ, PATH=f"{tools}:{os.environ['PATH']}", IPVSADM_TABLE=str(table),
               KUBEIPVS_EXPIRE_NODEST_CONN=str(tmp_path / "expire_nodest_conn"),
               SYSTEMD_RUN_LOG=str(tmp_path / "systemd-run.log"))

    def run(*args, wait=True, stdin=None, **more_env):
        command = ["sh", str(PROGRAM), *args] + ([] if args[:1] == ("--start",) else [str(rules)])
        more_env.setdefault("RULES", str(rules))
        if wait:
            return subprocess.run(command, env=dict(env, **more_env), input=stdin, capture_output=True, text=True,
                                  check=False)
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    return table, rules, run


def lines(path):
    return path.read_text().splitlines()


def test_nothing_is_touched_while_a_recorded_service_is_left(node):
    table, rules, run = node
    table.write_text("\n".join(KEEPALIVED[:2] + KUBE) + "\n")  # keepalived dropped the others itself
    rules.write_text("\n".join(KEEPALIVED) + "\n")
    done = run("--once")
    assert done.returncode == 0, done.stderr
    assert lines(table) == KEEPALIVED[:2] + KUBE
    assert lines(rules) == KEEPALIVED, "the record is kept while the watch has not restored"


def test_after_a_flush_every_recorded_service_comes_back_with_its_real_servers(node):
    table, rules, run = node
    table.write_text("\n".join(KUBE) + "\n")  # kube-proxy flushed, then programmed its own
    rules.write_text("\n".join(KEEPALIVED) + "\n")
    done = run("--once")
    assert done.returncode == 0, done.stderr
    assert lines(table) == KUBE + KEEPALIVED
    assert not rules.exists() and "restored" in done.stdout


def test_one_recorded_service_back_already_is_not_a_flush(node):
    table, rules, run = node
    rules.write_text("\n".join(KEEPALIVED) + "\n")
    table.write_text("-A -f 7 -s wlc\n")  # keepalived put one back itself, with another scheduler
    done = run("--once")
    assert done.returncode == 0 and lines(table) == ["-A -f 7 -s wlc"] and rules.exists()


def test_a_line_the_kernel_refuses_is_reported_and_the_others_still_restored(node):
    table, rules, run = node
    table.write_text("")
    rules.write_text("\n".join(KEEPALIVED + ["-A -t 192.0.2.50:80 -s rr"]) + "\n")
    done = run("--once")
    assert done.returncode == 1 and "kept out: -A -t 192.0.2.50:80 -s rr" in done.stderr
    assert lines(table) == KEEPALIVED and not rules.exists()


def test_the_watch_waits_for_the_flush_then_restores_and_ends(node):
    table, rules, run = node
    table.write_text("\n".join(KEEPALIVED + KUBE) + "\n")
    rules.write_text("\n".join(KEEPALIVED) + "\n")
    watch = run(wait=False)
    try:
        time.sleep(2.5)
        assert watch.poll() is None, "the watch ended before any flush"
        assert lines(table) == KEEPALIVED + KUBE
        table.write_text("")  # kube-proxy's start in nftables mode
        out, err = watch.communicate(timeout=60)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert watch.returncode == 0, err
    assert lines(table) == KEEPALIVED and not rules.exists() and "restored" in out


def test_without_a_record_there_is_nothing_to_do(node):
    table, rules, run = node
    table.write_text("\n".join(KUBE) + "\n")
    done = run("--once")
    assert done.returncode == 0 and lines(table) == KUBE and not rules.exists()
    assert run(wait=True).returncode == 0


def sysctl(rules):
    return (rules.parent / "expire_nodest_conn").read_text().strip()


def test_record_keeps_the_named_services_with_their_real_servers_and_holds_the_sysctl(node):
    table, rules, run = node
    table.write_text("\n".join(KUBE + KEEPALIVED) + "\n")
    done = run("--record", stdin="-t 192.0.2.50:80\n-u [2001:db8::5]:53\n")
    assert done.returncode == 0, done.stderr
    assert lines(rules) == KEEPALIVED[:4] and "watching 2 foreign IPVS service(s)" in done.stdout
    assert sysctl(rules) == "0" and Path(f"{rules}.expire_nodest_conn").read_text().strip() == "1"
    assert lines(table) == KUBE + KEEPALIVED


def test_a_second_record_keeps_the_value_read_first_not_the_0_held(node):
    table, rules, run = node
    table.write_text("\n".join(KEEPALIVED) + "\n")
    assert run("--record", stdin="-t 192.0.2.50:80\n").returncode == 0
    assert run("--record", stdin="-t 192.0.2.50:80\n").returncode == 0
    assert sysctl(rules) == "0" and Path(f"{rules}.expire_nodest_conn").read_text().strip() == "1"
    done = run("--once")  # the services are there: nothing restored, the sysctl given back
    assert done.returncode == 0 and sysctl(rules) == "1" and not Path(f"{rules}.expire_nodest_conn").exists()
    assert lines(table) == KEEPALIVED and rules.exists(), "the record stays until the caller removes it"


def test_record_of_services_no_longer_there_records_nothing_and_holds_nothing(node):
    table, rules, run = node
    table.write_text("\n".join(KUBE) + "\n")
    done = run("--record", stdin="-t 192.0.2.50:80\n")
    assert done.returncode == 1 and "none of the services named" in done.stderr
    assert not rules.exists() and sysctl(rules) == "1"


@pytest.mark.parametrize(("sent", "given_back"), [(signal.SIGTERM, True), (signal.SIGKILL, False)])
def test_a_stopped_watch_gives_the_sysctl_back_a_killed_one_leaves_it_held(node, sent, given_back):
    """The role kills the watch before its restore, so that the sysctl goes back only after the services
    (its last task, --once); systemd's stop at RuntimeMaxSec gives it back."""
    table, rules, run = node
    table.write_text("\n".join(KEEPALIVED) + "\n")
    assert run("--record", stdin="-t 192.0.2.50:80\n").returncode == 0
    watch = run(wait=False)
    try:
        time.sleep(1.5)
        assert watch.poll() is None
        watch.send_signal(sent)
        watch.wait(timeout=30)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert sysctl(rules) == ("1" if given_back else "0")
    assert Path(f"{rules}.expire_nodest_conn").exists() is not given_back


def test_the_watch_restores_the_services_before_it_gives_the_sysctl_back(node):
    table, rules, run = node
    table.write_text("\n".join(KEEPALIVED) + "\n")
    assert run("--record", stdin="-t 192.0.2.50:80\n-f 7\n").returncode == 0
    table.write_text("")  # kube-proxy's flush
    done = run("--once")
    assert done.returncode == 0 and "restored" in done.stdout
    assert lines(table) == KEEPALIVED[:2] + KEEPALIVED[4:] and sysctl(rules) == "1" and not rules.exists()


def test_start_installs_the_program_records_and_runs_the_unit(node, tmp_path):
    """--start is the role's one node task before a held restart: the program installs itself where
    the unit runs it from, records the services in $KEYS (holding the sysctl), and starts the unit."""
    table, rules, run = node
    table.write_text("\n".join(KUBE + KEEPALIVED) + "\n")
    installed = tmp_path / "sbin" / "kubeipvs-keep-foreign-ipvs"
    done = run("--start", PROGRAM=str(installed), UNIT="keep-unit", SECONDS_MAX="86400", KEYS="-t 192.0.2.50:80\n-f 7")
    assert done.returncode == 0, done.stderr
    assert "watching 2 foreign IPVS service(s)" in done.stdout
    assert installed.read_bytes() == PROGRAM.read_bytes() and os.access(installed, os.X_OK)
    assert lines(rules) == KEEPALIVED[:2] + KEEPALIVED[4:] and sysctl(rules) == "0"
    assert lines(tmp_path / "systemd-run.log") == [
        f"--quiet --collect --unit keep-unit -p RuntimeMaxSec=86400 {installed} {rules}"]


def test_start_that_cannot_run_the_unit_leaves_nothing_held(node, tmp_path):
    table, rules, run = node
    table.write_text("\n".join(KEEPALIVED) + "\n")
    installed = tmp_path / "kubeipvs-keep-foreign-ipvs"
    start = {"PROGRAM": str(installed), "UNIT": "keep-unit", "SECONDS_MAX": "60"}
    done = run("--start", **start, KEYS="-t 192.0.2.50:80", SYSTEMD_RUN_FAILS="1")
    assert done.returncode == 4 and "no watch: systemd-run failed" in done.stdout, done
    assert not rules.exists() and sysctl(rules) == "1" and not Path(f"{rules}.expire_nodest_conn").exists()
    done = run("--start", **start, KEYS="-t 192.0.2.99:80")  # not in the table
    assert done.returncode == 4 and "no watch: recording the services failed" in done.stdout, done
    assert not rules.exists() and sysctl(rules) == "1"
    assert run("--start", **dict(start, UNIT="")).returncode == 2  # usage
    assert run("--start", "extra", **start).returncode == 2
