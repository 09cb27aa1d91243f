# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Hostile input against the host kernel: ipset, iptables_chain and nftables_table run as Ansible runs
them, each example in a network namespace of its own that also holds foreign objects. The property:
a run fails and the namespace is exactly as it was, or it succeeds, the kernel reads back what the
task asked for, the foreign objects are untouched and a second run changes nothing. Then the
all-or-nothing machinery itself (rollback of a refused ipset batch, the nft canary, the sysctl probe)
against the real kernel."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.node._commands import Commands
from ansible_collections.kubeipvs.node.plugins.module_utils.node._sysctl import probe_in_scratch
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import IPV4
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._ipset import normalise_entries
from ansible_collections.kubeipvs.node.tests.unit.hostile import hostile_numbers, hostile_text
from conftest import COLLECTION, COLLECTIONS_PATH, NetNS, _missing_prerequisite
from hypothesis import event, given, settings
from hypothesis import strategies as st

EXAMPLES = 20


@contextlib.contextmanager
def namespace():
    """A fresh network namespace (and a directory for the module's files) for one example."""
    reason = _missing_prerequisite()
    if reason:
        pytest.fail(f"host-kernel tests cannot run: {reason} (run 'make setup' as root)")
    name = f"kubeipvs-h-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            yield NetNS(name, Path(tmp))
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


# --- ipset ------------------------------------------------------------------------------------------

FOREIGN_SET = "create FOREIGN hash:ip family inet hashsize 1024 maxelem 65536\nadd FOREIGN 192.0.2.1\n"
MEMBERS = {
    "hash:ip": ["10.0.0.1", "10.0.0.2/32", "192.0.2.9"], "hash:ip,port": ["10.0.0.1,80", "10.0.0.2,udp:53"],
    "hash:net,iface": ["10.0.0.0/8,eth0", "10.1.0.0/16,physdev:br0"], "hash:ip,mark": ["10.0.0.1,0x10", "10.0.0.2,16"],
    "bitmap:port": ["80", "tcp:443"], "hash:net": ["10.0.0.0/8", "192.0.2.0/24"],
}


@settings(max_examples=EXAMPLES)
@given(data=st.data(), set_type=st.sampled_from(sorted(MEMBERS)), existing=st.sampled_from(sorted(MEMBERS)),
       maxelem=st.one_of(st.none(), st.just(2), hostile_numbers))
def test_ipset_hostile_members_against_the_kernel(data, set_type, existing, maxelem):
    valid = st.sampled_from(MEMBERS[set_type])
    mixed = st.lists(st.one_of(valid, hostile_text(valid)), max_size=3)
    members = data.draw(st.one_of(st.lists(valid, max_size=3), mixed))
    args = {"name": "S", "type": set_type, "members": members, "exclusive": True,
            **({"maxelem": maxelem} if maxelem is not None else {})}
    with namespace() as netns:
        netns.sh(f"ipset restore <<'EOF'\n{FOREIGN_SET}EOF")
        # S exists already, of some type: the task creates, swaps, re-creates or changes it in place
        netns.module("ipset", name="S", type=existing, members=MEMBERS[existing][:1])
        before, foreign = netns.sh("ipset save"), netns.sh("ipset save FOREIGN")
        result = netns.module("ipset", **args)
        event("refused" if result.get("failed") else "applied")
        if result.get("failed"):
            assert netns.sh("ipset save") == before, result
            return
        saved = netns.sh("ipset save S")
        assert f" {set_type} " in saved.splitlines()[0]
        expected = normalise_entries(members, set_type, IPV4, (0, 65535) if set_type == "bitmap:port" else None)
        assert {line.split(" ", 2)[2] for line in saved.splitlines() if line.startswith("add ")} == expected
        assert netns.sh("ipset save FOREIGN") == foreign
        assert sorted(netns.sh("ipset list -n").split()) == ["FOREIGN", "S"], "a scratch set was left behind"
        assert not netns.module("ipset", **args)["changed"]


def test_a_type_change_never_destroys_the_set_before_its_replacement_exists(netns):
    netns.sh(f"ipset restore <<'EOF'\n{FOREIGN_SET}EOF")
    netns.module("ipset", name="S", type="hash:ip", members=["10.0.0.1"])
    result = netns.module("ipset", name="S", type="hash:ip,port", members=["10.0.0.1,80"], exclusive=True)
    assert result["method"] == "recreate", result
    assert netns.sh("ipset save S").splitlines()[1:] == ["add S 10.0.0.1,tcp:80"]
    assert sorted(netns.sh("ipset list -n").split()) == ["FOREIGN", "S"]
    # A set the kernel still counts references to is never renamed aside or destroyed.
    netns.sh("iptables -A INPUT -m set --match-set S src,dst -j ACCEPT")
    refused = netns.module("ipset", name="S", type="hash:ip", members=["10.0.0.1"], exclusive=True)
    assert refused.get("failed") and "reference" in refused["msg"], refused
    assert netns.sh("ipset save S").splitlines()[1:] == ["add S 10.0.0.1,tcp:80"]


ROLLBACK_SCRIPT = """
import json, shutil, subprocess, sys
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.node._commands import Commands
from ansible_collections.kubeipvs.node.plugins.module_utils.node._ipset import Ipsets
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._ipset import Batch

def run_command(argv, data=None, binary_data=False, environ_update=None):
    done = subprocess.run(argv, input=data, capture_output=True, text=True)
    return done.returncode, done.stdout, done.stderr

batch = Batch()
for name, method, text in json.loads(sys.argv[1]):
    batch.add(name, method, text)
try:
    Ipsets(Commands(run_command, shutil.which)).restore(batch)
except KubeIpvsError as error:
    print(error.msg)
"""


def test_a_batch_the_kernel_stops_half_way_is_rolled_back(netns):
    """The kernel refuses line 6 (its set does not exist): the five lines before it - a member added and
    one deleted in place, a set created and filled, a set swapped with a scratch one - are undone."""
    netns.sh("ipset restore <<'EOF'\ncreate A hash:ip\nadd A 10.0.0.1\ncreate B hash:ip\nadd B 10.0.0.5\n"
             "create B-tmp1234567 hash:ip\nadd B-tmp1234567 10.0.0.6\nEOF")
    before = netns.sh("ipset save")
    chunks = [["A", "incremental", "add A 10.0.0.2\ndel A 10.0.0.1\n"],
              ["N", "create", "create N hash:ip\nadd N 10.0.0.3\n"], ["B", "swap", "swap B-tmp1234567 B\n"],
              ["MISSING", "incremental", "add MISSING 10.0.0.4\n"]]
    env = dict(os.environ, PYTHONPATH=str(COLLECTIONS_PATH))
    done = subprocess.run(["ip", "netns", "exec", netns.name, sys.executable, "-c", ROLLBACK_SCRIPT,
                           json.dumps(chunks)], capture_output=True, text=True, env=env, check=True)
    assert "set MISSING failed" in done.stdout and "rolled back, nothing changed" in done.stdout, done.stdout
    assert netns.sh("ipset save") == before


# --- iptables --------------------------------------------------------------------------------------

FOREIGN_RULES = "*nat\n:FOREIGN - [0:0]\n-A FOREIGN -j RETURN\n-A POSTROUTING -j FOREIGN\nCOMMIT\n"
VALID_RULES = ["-j RETURN", "-j MARK --or-mark 0x4000", "-m mark ! --mark 0x4000/0x4000 -j RETURN",
               '-m comment --comment "a b" -j ACCEPT', "-s 10.0.0.1 -p tcp --dport 80 -j ACCEPT",
               "-j MARK --set-xmark 0x1/0xff", "-d 192.0.2.0/24 -j RETURN"]


@settings(max_examples=EXAMPLES)
@given(rules=st.one_of(st.lists(st.sampled_from(VALID_RULES), max_size=3),
                       st.lists(st.one_of(st.sampled_from(VALID_RULES), hostile_text(st.sampled_from(VALID_RULES))),
                                min_size=1, max_size=3)),
       comment=st.one_of(st.just("kubernetes postrouting rules"), hostile_text()))
def test_iptables_hostile_rules_against_the_kernel(rules, comment):
    args = {"table": "nat", "chain": "KUBE-X", "rules": rules, "jumps": [{"chain": "POSTROUTING", "comment": comment}]}
    with namespace() as netns:
        netns.sh(f"iptables-restore --noflush <<'EOF'\n{FOREIGN_RULES}EOF")
        before = netns.sh("iptables-save -t nat | grep -v '^#'")
        result = netns.module("iptables_chain", **args)
        event("refused" if result.get("failed") else "applied")
        if result.get("failed"):
            assert netns.sh("iptables-save -t nat | grep -v '^#'") == before, result
            return
        after = netns.sh("iptables-save -t nat")
        # an empty rule (match everything, no target) is saved as a bare "-A KUBE-X"
        assert [line[len("-A KUBE-X "):] for line in after.splitlines()
                if line == "-A KUBE-X" or line.startswith("-A KUBE-X ")] == \
            result["rules"]
        assert "-A FOREIGN -j RETURN" in after and "-A POSTROUTING -j FOREIGN" in after
        assert not netns.module("iptables_chain", **args)["changed"]


def test_without_unshare_no_rule_reaches_the_kernel(netns):
    """The rules can only be validated in a scratch namespace: a node without unshare gets nothing."""
    args_file = netns.tmp_path / "args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {"table": "nat", "chain": "KUBE-X",
                                                             "rules": ["-j RETURN"], "_ansible_tmpdir": str(
                                                                 netns.tmp_path)}}))
    before = netns.sh("iptables-save -t nat | grep -v '^#'")
    env = dict(os.environ, PYTHONPATH=str(COLLECTIONS_PATH), PATH="/usr/sbin:/sbin")  # unshare is in /usr/bin
    done = subprocess.run([shutil.which("ip"), "netns", "exec", netns.name, sys.executable,
                           str(COLLECTION / "plugins/modules/iptables_chain.py"), str(args_file)],
                          capture_output=True, text=True, env=env, check=False)
    result = json.loads(done.stdout)
    assert result.get("failed") and "unshare" in result["msg"], result
    assert netns.sh("iptables-save -t nat | grep -v '^#'") == before


# --- nftables --------------------------------------------------------------------------------------

FOREIGN_TABLE = "table inet foreign {\n\tchain keep {\n\t\ttype filter hook input priority 0; policy accept;\n\t}\n}\n"
NFT_PIECES = [
    "chain c {\n\ttype filter hook input priority 0; policy accept;\n\tcounter\n}\n", "set s {\n\ttype ipv4_addr\n}\n",
    "chain d {\n}\n", "}\n", "{\n", "# a comment }\n", 'chain e {\n\tcomment "} # {"\n}\n', "flush ruleset\n",
    'include "/etc/nftables.conf"\n', "\r\n", "# x\x0b}\n", "# x\u2028}\n", "table ip other {\n",
    "delete table inet foreign\n", "chain f {\n\tip saddr { 192.0.2.1, 192.0.2.2 } drop\n}\n", ";\n", "\\\n"]


VALID_PIECES = [piece for piece in NFT_PIECES if piece.startswith(("chain", "set"))]


@settings(max_examples=EXAMPLES + 10)
@given(pieces=st.one_of(st.lists(st.sampled_from(VALID_PIECES), max_size=3, unique=True),
                        st.lists(st.sampled_from(NFT_PIECES), max_size=5)),
       name=st.one_of(st.just("demo"), hostile_text(st.just("demo"))))
def test_nftables_hostile_content_against_the_kernel(pieces, name):
    content = "".join(pieces)
    with namespace() as netns:
        netns.sh(f"nft -f - <<'EOF'\n{FOREIGN_TABLE}EOF")
        before, foreign = netns.sh("nft list ruleset"), netns.sh("nft list table inet foreign")
        result = netns.module("nftables_table", family="ip", name=name, content=content)
        event("refused" if result.get("failed") else "applied")
        if result.get("failed"):
            assert netns.sh("nft list ruleset") == before, result
            return
        assert netns.sh("nft list table inet foreign") == foreign
        assert sorted(netns.sh("nft list tables").splitlines()) == sorted(["table inet foreign", f"table ip {name}"])
        assert not netns.module("nftables_table", family="ip", name=name, content=content)["changed"]


CANARY_SCRIPT = """
import shutil, subprocess, sys
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.node._commands import Commands
from ansible_collections.kubeipvs.node.plugins.module_utils.node._nftables import TableEditor

def run_command(argv, data=None, binary_data=False, environ_update=None):
    done = subprocess.run(argv, input=data, capture_output=True, text=True)
    return done.returncode, done.stdout, done.stderr

try:
    TableEditor(Commands(run_command, shutil.which)).scratch_load(sys.stdin.read(), "ip", "demo")
    print("loaded")
except KubeIpvsError as error:
    print(error.msg)
"""


@pytest.mark.parametrize("escape", ["}\nflush ruleset\ntable ip demo {\n", "}\nflush ruleset ip6\ntable ip demo {\n",
                                    "}\ndelete table inet foreign\ntable ip demo {\n"])
def test_the_scratch_canary_catches_a_batch_that_leaves_its_table(netns, escape):
    """Past the content check (the batch is handed to the adapter directly), the scratch namespace's
    canary tables still catch text that acts beyond the table; the node is never touched."""
    netns.sh(f"nft -f - <<'EOF'\n{FOREIGN_TABLE}EOF")
    before = netns.sh("nft list ruleset")
    batch = f"add table ip demo\ndelete table ip demo\ntable ip demo {{\n{escape}}}\n"
    env = dict(os.environ, PYTHONPATH=str(COLLECTIONS_PATH))
    done = subprocess.run(["ip", "netns", "exec", netns.name, sys.executable, "-c", CANARY_SCRIPT], input=batch,
                          capture_output=True, text=True, env=env, check=True)
    if "foreign" in escape:
        # the scratch namespace has no table of that name: nft refuses to delete it, nothing else ran
        assert "nft rejected the content" in done.stdout, done.stdout
    else:
        assert "changed other tables" in done.stdout, done.stdout
    assert netns.sh("nft list ruleset") == before


# --- sysctl: the scratch-namespace probe -----------------------------------------------------------

def run_command(argv, data=None, binary_data=False, environ_update=None):
    done = subprocess.run(argv, input=data, capture_output=True, text=True, check=False)
    return done.returncode, done.stdout, done.stderr


def test_sysctl_values_the_kernel_refuses_fail_in_a_scratch_namespace():
    """The probe writes only inside a network namespace of its own: the values here never move."""
    commands = Commands(run_command, shutil.which)
    keys = ("/proc/sys/net/ipv4/ip_local_port_range", "/proc/sys/net/core/somaxconn")
    before = [Path(key).read_text() for key in keys]
    for refused in ({"net.ipv4.ip_local_port_range": "9 8"}, {"net.core.somaxconn": "99999999999"}):
        with pytest.raises(KubeIpvsError, match="the kernel refuses these values"):
            probe_in_scratch(commands, sys.executable, refused)
    probe_in_scratch(commands, sys.executable, {"net.ipv4.ip_local_port_range": "20000 30000",
                                                "kernel.this_is_not_tried": "1"})
    assert [Path(key).read_text() for key in keys] == before
