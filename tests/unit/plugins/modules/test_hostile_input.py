# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Property tests: every node-side module, through its real AnsibleModule, with hostile options drawn
by hypothesis (tests/unit/hostile.py). The property is the same everywhere: the run ends in a clean
failure (the argument spec's or a KubeIpvsError, never another exception) and the faked node is
unchanged - or it succeeds and what reached the node is text the tool reads as intended (no control
character, no object outside the task's own). The real kernel's answer is proven in
tests/integration/test_hostile_input_netns.py."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.node import _dataplane as _dataplane_node
from ansible_collections.kubeipvs.node.plugins.module_utils.node import _ipvs_reconcile
from ansible_collections.kubeipvs.node.plugins.module_utils.node._nftables import SCRATCH_SEPARATOR
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import IPV4
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._ipset import backup_set_name, temporary_set_name
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._ipvs_plan import PROTO_TCP, Service
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._nftables import replace_batch
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._sysctl import parse_dropin
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._text import CONTROL
from ansible_collections.kubeipvs.node.plugins.modules import (
    conntrack,
    dataplane_facts,
    dummy_interface,
    ipset,
    iptables_chain,
    ipvs_service,
    ipvs_sync,
    kernel_module,
    nftables_table,
    proxy_cleanup,
    sysctl,
)
from ansible_collections.kubeipvs.node.tests.unit.fakes.ipvs import FakeIpvsKernel, FakeLinkKernel
from ansible_collections.kubeipvs.node.tests.unit.hostile import anything, hostile_numbers, hostile_text, wrong_types
from ansible_collections.kubeipvs.node.tests.unit.plugins.modules.helpers import NodeTools, build
from hypothesis import event, given, settings
from hypothesis import strategies as st

EXAMPLES = 60


def clean_text(text):
    """No control character but the line breaks the tools' input is made of."""
    return CONTROL.search(text.replace("\n", "")) is None


def build_or_fail(module_file, tools, **args):
    """(the module's AnsibleModule, None) or (None, the argument spec's failure result)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            return build(module_file, tools, **args), None
        except SystemExit:
            return None, json.loads(out.getvalue())


def main_result(module_file, **args):
    """The JSON result of the module's main() with ``args`` (a failure ends it too)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), patch_module_args(dict(args, _ansible_diff=True)), \
            pytest.raises(SystemExit):
        module_file.main()
    result = json.loads(out.getvalue())
    assert "exception" not in result, result["exception"]
    return result


def body_result(body, module):
    """``body(module)``, or the KubeIpvsError it raised (anything else fails the test)."""
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            return body(module)
        except KubeIpvsError as error:
            return error


# --- ipset ---------------------------------------------------------------------------------------

VALID_MEMBERS = {
    "hash:ip": ["10.0.0.1", "10.0.0.2/32", "192.0.2.9"], "hash:ip,port": ["10.0.0.1,80", "10.0.0.2,udp:53"],
    "hash:net,iface": ["10.0.0.0/8,eth0", "10.1.0.0/16,physdev:br0"], "hash:ip,mark": ["10.0.0.1,0x10", "10.0.0.2,16"],
    "bitmap:port": ["80", "tcp:443"], "hash:net": ["10.0.0.0/8", "192.0.2.0/24"], "hash:mac": ["aa:bb:cc:dd:ee:ff"],
}
SET_TYPES = st.sampled_from(sorted(VALID_MEMBERS))
SAVED = "create S hash:ip family inet hashsize 1024 maxelem 65536\nadd S 10.0.0.1\n"


@st.composite
def set_members(draw, set_type):
    valid = st.sampled_from(VALID_MEMBERS.get(set_type, ["10.0.0.1"]))
    return draw(st.one_of(st.lists(valid, max_size=3), st.lists(st.one_of(valid, hostile_text(valid)), max_size=4)))


class IpsetTools(NodeTools):
    def __init__(self):
        super().__init__(("ipset", "iptables-save"))

    def answer(self, argv, data):
        if argv[0].endswith("ipset") and argv[1] == "save":
            return 0, SAVED, ""
        return 0, "", ""

    def writes(self):
        return [(argv, data) for argv, data in self.commands
                if argv[0].endswith("ipset") and argv[1] in ("restore", "destroy")]


@settings(max_examples=EXAMPLES)
@given(name=st.one_of(st.just("S"), hostile_text(st.just("S"))),
       set_type=st.one_of(SET_TYPES, SET_TYPES, hostile_text()), data=st.data(),
       hashsize=st.one_of(st.none(), st.just(64), hostile_numbers),
       maxelem=st.one_of(st.none(), st.just(10), hostile_numbers),
       timeout=st.one_of(st.none(), st.just(0), hostile_numbers),
       range_=st.one_of(st.none(), st.just("0-65535"), hostile_text()), check_mode=st.booleans())
def test_ipset_hostile_input(name, set_type, data, hashsize, maxelem, timeout, range_, check_mode):
    members = data.draw(set_members(set_type))
    tools = IpsetTools()
    args = {key: value for key, value in {"name": name, "type": set_type, "members": members, "hashsize": hashsize,
                                          "maxelem": maxelem, "timeout": timeout, "range": range_}.items()
            if value is not None}
    module, failed = build_or_fail(ipset, tools, check_mode=check_mode, exclusive=True, **args)
    result = failed or body_result(ipset.ensure_sets, module)
    event("refused" if failed or isinstance(result, KubeIpvsError) else "applied")
    if failed or isinstance(result, KubeIpvsError):
        assert tools.writes() == []
        return
    for _argv, batch in tools.writes():
        assert clean_text(batch)
        for line in batch.splitlines():
            words = line.split(" ")
            assert words[0] in ("create", "add", "del", "destroy", "swap", "rename"), line
            touched = words[1:3] if words[0] in ("swap", "rename") else words[1:2]
            owned = {name, temporary_set_name(name), backup_set_name(name)}
            assert all(word in owned for word in touched), line
            if words[0] in ("add", "del"):
                assert len(words) == 3, line  # one member, no extra words


# --- iptables_chain --------------------------------------------------------------------------------

VALID_RULES = st.sampled_from(["-j RETURN", "-j MARK --or-mark 0x4000", "-m mark ! --mark 0x4000/0x4000 -j RETURN",
                               '-m comment --comment "a b" -j ACCEPT', "-s 10.0.0.1 -p tcp --dport 80 -j ACCEPT",
                               "-m set --match-set S src -j RETURN", "-j MARK --set-xmark 0x1/0xff"])
RULE_TOKENS = st.sampled_from(["-j", "ACCEPT", "RETURN", "MARK", "--or-mark", "0x4000", "-m", "comment", "--comment",
                               '"a b"', "-s", "10.0.0.1", "-p", "tcp", "--dport", "80", "mark", "--mark", "!",
                               "set", "--match-set", "S", "src", "--set-xmark", "0x1/0xff", "-d", "::1"])
RULES = st.one_of(VALID_RULES, st.lists(RULE_TOKENS, min_size=1, max_size=8).map(" ".join))


class IptablesTools(NodeTools):
    """iptables-save with a foreign chain; the scratch namespace prints back what it was given (as
    iptables would, for the forms it keeps)."""

    def answer(self, argv, data):
        tool = argv[0].rsplit("/", 1)[-1]
        if tool == "unshare":
            with open(argv[-3]) as handle:  # the rules file the scratch namespace restores
                return 0, handle.read(), ""
        if tool == "iptables-nft-save":
            return 0, "*nat\n:POSTROUTING ACCEPT [0:0]\n:FOREIGN - [0:0]\n-A POSTROUTING -j FOREIGN\nCOMMIT\n", ""
        if tool == "ipset":
            return 0, "Name: S\nType: hash:ip\nHeader: family inet\n", ""
        return 0, "", ""

    def writes(self):
        return [data for argv, data in self.commands if argv[0].endswith("restore") and "--noflush" in argv]


@settings(max_examples=EXAMPLES)
@given(chain=st.one_of(st.just("KUBE-X"), hostile_text(st.just("KUBE-X"))),
       rules=st.one_of(st.lists(VALID_RULES, max_size=3), st.lists(st.one_of(RULES, hostile_text(RULES)), max_size=3)),
       jump_args=st.one_of(st.just(""), st.just("-s 10.0.0.0/8"), hostile_text(RULES)),
       comment=st.one_of(st.none(), st.just("kube"), hostile_text()),
       check_mode=st.booleans())
def test_iptables_chain_hostile_input(chain, rules, jump_args, comment, check_mode):
    tools = IptablesTools()
    jump = {"chain": "POSTROUTING", "args": jump_args, **({"comment": comment} if comment is not None else {})}
    with tempfile.TemporaryDirectory() as tmp:
        module, failed = build_or_fail(iptables_chain, tools, check_mode=check_mode, tmpdir=tmp, table="nat",
                                       backend="nft", chain=chain, rules=rules, jumps=[jump])
        result = failed or body_result(iptables_chain.ensure_chains, module)
    event("refused" if failed or isinstance(result, KubeIpvsError) else "applied")
    if failed or isinstance(result, KubeIpvsError):
        assert tools.writes() == []
        return
    for batch in tools.writes():
        assert clean_text(batch)
        for line in batch.splitlines():
            verb, _space, rest = line.partition(" ")
            if verb in ("-A", "-I", "-D", "-X"):
                assert rest.split(" ", 1)[0] in (chain, "POSTROUTING"), line
            else:
                assert line in ("*nat", "COMMIT") or line == f":{chain} - [0:0]", line


# --- nftables_table --------------------------------------------------------------------------------

NFT_PIECES = st.sampled_from([
    "chain d {\n\tcounter\n}\n", "chain c {\n", "}\n", "{", "}", "type filter hook input priority 0;", "counter\n",
    "# comment }\n", '"string } {"', 'comment "x"\n', "set s {\n type ipv4_addr\n}\n", "flush ruleset\n", "include",
    "\\\n", "\r", "\x0b", "\u2028", "table ip other {\n", "delete table ip foreign\n", ";", "\t"])
NFT_CONTENT = st.lists(NFT_PIECES, max_size=10).map("".join)


class NftTools(NodeTools):
    """nft and unshare: the scratch namespace loads any content that got past the checks into an empty
    table (the kernel's verdict on it is the integration tests'), and the node then holds that table."""

    EMPTY = json.dumps({"nftables": []})

    def __init__(self):
        super().__init__(("nft", "unshare"))
        self.live = None

    def answer(self, argv, data):
        if argv[0].endswith("unshare"):
            family, name = argv[-2], argv[-1]
            tables = json.dumps({"nftables": [{"table": {"family": family, "name": name}}]})
            sep = SCRATCH_SEPARATOR + "\n"
            return 0, tables + "\n" + sep + self.EMPTY + "\n" + sep + "", ""
        if argv[1] == "-f":
            self.live = self.EMPTY
            return 0, "", ""
        if self.live is None:
            return 1, "", "Error: No such file or directory"
        return 0, self.live, ""

    def writes(self):
        return [data for argv, data in self.commands if argv[1] in ("-f", "delete")]


@settings(max_examples=EXAMPLES * 2)
@given(name=st.one_of(st.just("demo"), hostile_text(st.just("demo"))),
       content=st.one_of(NFT_CONTENT, hostile_text(NFT_CONTENT), wrong_types))
def test_nftables_table_hostile_input(name, content):
    tools = NftTools()
    module, failed = build_or_fail(nftables_table, tools, family="ip", name=name, content=content)
    result = failed or body_result(nftables_table.nftables_table, module)
    event("refused" if failed or isinstance(result, KubeIpvsError) else "applied")
    if failed or isinstance(result, KubeIpvsError):
        assert tools.writes() == []
        return
    # What reached nft is one table, and its body is the content, whole: nothing before the table's
    # own brace can close it (the real nft's reading of it is the integration tests').
    content = module.params["content"]  # as the argument spec made it a string
    assert tools.writes() == [replace_batch("ip", name, content)]
    assert clean_text(content.replace("\t", "")) and "include" not in content


# --- sysctl, kernel_module, conntrack on a fake root -----------------------------------------------

def fake_root(base):
    """A node of files: /proc/sys keys, a kernel's module lists, nf_conntrack loaded."""
    release = os.uname().release
    modules = base / "lib/modules" / release
    modules.mkdir(parents=True)
    (modules / "modules.builtin").write_text("")
    (modules / "modules.dep").write_text("kernel/net/netfilter/ipvs/ip_vs.ko:\nkernel/nf_conntrack.ko:\n")
    for path, value in (("net/ipv4/ip_forward", "0"), ("net/ipv4/ip_local_port_range", "32768\t60999"),
                        ("net/netfilter/nf_conntrack_max", "65536"),
                        ("net/netfilter/nf_conntrack_tcp_timeout_established", "432000"),
                        ("net/netfilter/nf_conntrack_tcp_timeout_close_wait", "60")):
        (base / "proc/sys" / path).parent.mkdir(parents=True, exist_ok=True)
        (base / "proc/sys" / path).write_text(value + "\n")
    (base / "proc/modules").write_text("nf_conntrack 1 0 - Live 0x0\n")
    (base / "sys/module/nf_conntrack/parameters").mkdir(parents=True)
    (base / "sys/module/nf_conntrack/parameters/hashsize").write_text("16384\n")
    for pid in ("self", "1"):
        (base / "proc" / pid / "ns").mkdir(parents=True)
        (base / "proc" / pid / "ns/net").symlink_to("net:[4026531840]")


def snapshot(base):
    return {str(path.relative_to(base)): path.read_bytes() for path in sorted(base.rglob("*"))
            if path.is_file() and not path.is_symlink()}


def run_on_root(module_file, body, args, check_mode=False):
    """(result or KubeIpvsError or the argument spec's failure, files before, files after)."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        fake_root(base)
        before = snapshot(base)
        out = io.StringIO()
        with contextlib.redirect_stdout(out), patch_module_args(dict(args, _ansible_check_mode=check_mode,
                                                                     _ansible_diff=True)):
            try:
                module = module_file.build_module() if hasattr(module_file, "build_module") else None
            except SystemExit:
                return json.loads(out.getvalue()), before, snapshot(base)
        module.run_command = lambda argv, **_kwargs: (1, "", "modprobe: FATAL: not in the fake kernel")
        module.get_bin_path = lambda name, required=False: name
        try:
            result = body(module, root=str(base))
        except KubeIpvsError as error:
            result = error
        return result, before, snapshot(base)


SYSCTL_KEYS = st.sampled_from(["net.ipv4.ip_forward", "net.ipv4.ip_local_port_range", "net/ipv4/ip_forward",
                               "net.ipv4.no_such", "kernel.x"])


@settings(max_examples=EXAMPLES)
@given(settings_=st.one_of(
    st.dictionaries(st.sampled_from(["net.ipv4.ip_forward", "net/ipv4/ip_forward"]), st.integers(0, 1), min_size=1),
    st.dictionaries(st.one_of(SYSCTL_KEYS, hostile_text(SYSCTL_KEYS)),
                    st.one_of(st.integers(0, 2), st.just("1024 65000"), anything(), st.lists(
                        st.one_of(st.integers(), hostile_text()), max_size=3)), min_size=1, max_size=3)),
       file=st.one_of(st.just("/etc/sysctl.d/90-kubeipvs-node.conf"),
                      hostile_text(st.just("/etc/sysctl.d/x.conf"))),
       check_mode=st.booleans())
def test_sysctl_hostile_input(settings_, file, check_mode):
    result, before, after = run_on_root(sysctl, sysctl.ensure_sysctl, {"settings": settings_, "file": file},
                                        check_mode)
    event("refused" if isinstance(result, KubeIpvsError) or result.get("failed") else "applied")
    if check_mode or isinstance(result, KubeIpvsError) or result.get("failed"):
        assert after == before
        return
    written = after.get(file.lstrip("/"), b"").decode()
    assert clean_text(written)
    assert set(parse_dropin(written)) == {key.strip(" ").replace("/", ".") for key in settings_}


@settings(max_examples=EXAMPLES)
@given(names=st.lists(st.one_of(st.sampled_from(["ip_vs", "ip-vs", "nf_conntrack"]), hostile_text()), min_size=1,
                      max_size=3),
       params=st.one_of(st.none(), st.dictionaries(hostile_text(st.just("conn_tab_bits")), anything(), max_size=2)),
       load_file=hostile_text(st.just("/etc/modules-load.d/kubeipvs-node.conf")))
def test_kernel_module_hostile_input(names, params, load_file):
    args = {"name": names, "modules_load_file": load_file, **({"params": params} if params is not None else {})}
    result, before, after = run_on_root(kernel_module, kernel_module.ensure_kernel_modules, args)
    if isinstance(result, KubeIpvsError) or result.get("failed"):
        assert after == before
    else:
        assert all(clean_text(content.decode()) for path, content in after.items() if path.startswith("etc/"))


@settings(max_examples=EXAMPLES)
@given(values=st.fixed_dictionaries({}, optional={
    "max": hostile_numbers, "min": hostile_numbers, "max_per_core": hostile_numbers, "hashsize": hostile_numbers,
    "tcp_timeout_established": hostile_numbers, "tcp_timeout_close_wait": hostile_numbers,
    "file": hostile_text(st.just("/etc/sysctl.d/90-c.conf"))}), check_mode=st.booleans())
def test_conntrack_hostile_input(values, check_mode):
    result, before, after = run_on_root(conntrack, conntrack.ensure_conntrack, values, check_mode)
    if check_mode or isinstance(result, KubeIpvsError) or result.get("failed"):
        assert after == before


# --- netlink modules against the in-memory kernels ---------------------------------------------------

@settings(max_examples=EXAMPLES)
@given(name=st.one_of(st.just("kube-ipvs0"), hostile_text(st.just("kube-ipvs0"))),
       addresses=st.lists(st.one_of(st.sampled_from(["10.96.0.1", "fd00::1", "10.96.0.2/32"]), anything()),
                          max_size=4))
def test_dummy_interface_hostile_input(name, addresses):
    links = FakeLinkKernel({"eth0": ("", {"10.0.2.15": (IPV4, 24)})})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dummy_interface, "LinkKernel", lambda: links)
        result = main_result(dummy_interface, name=name, addresses=addresses)
    if result.get("failed"):
        assert links.calls == [] and set(links.links) == {"eth0"}
    else:
        assert all(clean_text(link) for link in links.links)


SERVICE_ENTRY = st.fixed_dictionaries(
    {"address": st.one_of(st.just("10.96.0.10"), anything()), "port": st.one_of(st.just(80), hostile_numbers)},
    optional={"protocol": anything(st.just("tcp")), "scheduler": anything(st.just("rr")),
              "scheduler_flags": anything(), "persistence_timeout": hostile_numbers, "netmask": anything(),
              "family": anything(), "state": anything(), "fwmark": hostile_numbers,
              "real_servers": st.lists(st.fixed_dictionaries({"address": anything(st.just("10.0.0.1"))}, optional={
                  "port": hostile_numbers, "weight": hostile_numbers, "forwarding": anything(),
                  "upper_threshold": hostile_numbers}), max_size=2)})


SCOPE_CIDRS = st.lists(anything(st.just("10.96.0.0/12")), max_size=2)
SYNC_SCOPE = st.fixed_dictionaries({}, optional={"cidrs": SCOPE_CIDRS,
                                                 "dummy_interface": anything(st.just("kube-ipvs0")),
                                                 "fwmarks": st.lists(hostile_numbers, max_size=2)})
CLEANUP_SCOPE = st.fixed_dictionaries({}, optional={"cidrs": SCOPE_CIDRS,
                                                    "dummy_interface": anything(st.just("kube-ipvs0"))})


@settings(max_examples=EXAMPLES)
@given(entries=st.one_of(st.lists(SERVICE_ENTRY, max_size=3), wrong_types), scope=SYNC_SCOPE)
def test_ipvs_sync_hostile_services_file(entries, scope):
    kernel = FakeIpvsKernel([Service(IPV4, PROTO_TCP, "192.0.2.50", 80)])
    links = FakeLinkKernel({"kube-ipvs0": ("dummy", {"10.96.0.10": (IPV4, 32)})})
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        patch.setattr(_ipvs_reconcile, "open_ipvs", lambda modprobe, check_mode, schedulers: kernel)
        patch.setattr(_ipvs_reconcile, "DRAIN_STATE_PATH", os.path.join(tmp, "drain.json"))
        patch.setattr(ipvs_sync, "LinkKernel", lambda: links)
        path = os.path.join(tmp, "services.json")
        with open(path, "w") as handle:
            handle.write(json.dumps(entries, default=str))  # JSON writes infinities and NaN as Infinity, NaN
        result = main_result(ipvs_sync, services_file=path, scope=scope)
    if result.get("failed"):
        assert kernel.applied == []


@settings(max_examples=EXAMPLES)
@given(entry=SERVICE_ENTRY)
def test_ipvs_service_hostile_options(entry):
    kernel = FakeIpvsKernel()
    args = {key: value for key, value in entry.items() if key != "family" or isinstance(value, str)}
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        patch.setattr(_ipvs_reconcile, "open_ipvs", lambda modprobe, check_mode, schedulers: kernel)
        patch.setattr(_ipvs_reconcile, "DRAIN_STATE_PATH", os.path.join(tmp, "drain.json"))
        result = main_result(ipvs_service, **args)
    if result.get("failed"):
        assert kernel.applied == []


@settings(max_examples=EXAMPLES)
@given(scope=CLEANUP_SCOPE, mode=st.sampled_from(["ipvs", "iptables", "nftables"]),
       drain=st.one_of(st.just(0), hostile_numbers),
       link_kind=st.sampled_from(["dummy", "bridge", ""]))
def test_proxy_cleanup_and_facts_hostile_scope(scope, mode, drain, link_kind):
    kernel = FakeIpvsKernel([Service(IPV4, PROTO_TCP, "10.96.0.1", 443), Service(IPV4, PROTO_TCP, "192.0.2.9", 80)])
    links = FakeLinkKernel({"kube-ipvs0": (link_kind, {"192.0.2.9": (IPV4, 32)})})
    tools = NodeTools()
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        (Path(tmp) / "proc/net").mkdir(parents=True)
        (Path(tmp) / "proc/net/ip_vs").write_text("")
        for module_file in (proxy_cleanup, dataplane_facts):
            patch.setattr(module_file, "IpvsKernel", lambda: kernel)
            patch.setattr(module_file, "LinkKernel", lambda: links)
            patch.setattr(module_file, "NodeReader", lambda *args, **kwargs: _dataplane_node.NodeReader(
                *args, proc_root=tmp, **kwargs))
        for module_file, body, args in ((dataplane_facts, dataplane_facts.gather, {}),
                                        (proxy_cleanup, proxy_cleanup.cleanup, {"mode": mode, "drain_seconds": drain})):
            module, failed = build_or_fail(module_file, tools, scope=scope, family="ipv4", **args)
            result = failed or body_result(body, module)
            if failed or isinstance(result, KubeIpvsError):
                assert kernel.applied == [] and "kube-ipvs0" in links.links
    # a service on a link that is not dummy is never kube-proxy's, and such a link never goes
    assert (IPV4, PROTO_TCP, "192.0.2.9", 80, 0) in kernel.table or link_kind == "dummy"
    assert "kube-ipvs0" in links.links or link_kind == "dummy"
