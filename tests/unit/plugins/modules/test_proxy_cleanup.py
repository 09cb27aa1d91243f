# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""proxy_cleanup and dataplane_facts through their real AnsibleModules, the system boundary faked:
the iptables/ipset/nft commands answer from canned text, IPVS and links are the in-memory fakes of
tests/unit/fakes."""

from __future__ import annotations

import functools
import gzip
import json
import os

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.node import _dataplane as _dataplane_node
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import IPV4, IPV6
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._ipvs_plan import (
    DEL_SERVICE,
    PROTO_TCP,
    PROTO_UDP,
    Service,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._links import Link
from ansible_collections.kubeipvs.node.plugins.modules import dataplane_facts, proxy_cleanup
from ansible_collections.kubeipvs.node.tests.unit.fakes.ipvs import FakeIpvsKernel, FakeLinkKernel
from ansible_collections.kubeipvs.node.tests.unit.plugins.modules.helpers import NodeTools, build

SAVE_V4 = """*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-SVC-AAAA - [0:0]
:FOREIGN-CHAIN - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -j FOREIGN-CHAIN
-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT
-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 443 -j KUBE-SVC-AAAA
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-POSTROUTING -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE
-A FOREIGN-CHAIN -m set --match-set FOREIGN-SET dst -j RETURN
COMMIT
*filter
:INPUT ACCEPT [0:0]
:KUBE-FIREWALL - [0:0]
-A INPUT -j KUBE-FIREWALL
COMMIT
"""
NFT_TABLES = json.dumps({"nftables": [{"metainfo": {"version": "1.0.6"}},
                                      {"table": {"family": "ip", "name": "kube-proxy", "handle": 3}},
                                      {"table": {"family": "ip", "name": "foreign", "handle": 4}}]})
SETS = "KUBE-CLUSTER-IP\nKUBE-LOOP-BACK\nFOREIGN-SET\n"

OWNED = [Service(IPV4, PROTO_TCP, "10.96.0.1", 443), Service(IPV4, PROTO_UDP, "10.97.0.10", 53)]
FOREIGN = Service(IPV4, PROTO_TCP, "192.0.2.50", 80)


IP_JSON = {"route": '[{"dst": "default", "gateway": "10.0.2.2", "dev": "eth0"}]',
           "addr": '[{"ifname": "eth0", "addr_info": [{"family": "inet", "local": "10.0.2.15", "prefixlen": 24}]}]'}


class NodeCommands(NodeTools):
    """iptables-nft-save, ipset, nft and ip answering from canned text; ``missing`` tools are not installed."""

    def __init__(self, save_v4=SAVE_V4, missing=()):
        super().__init__()
        self.missing = set(missing)
        self.outputs = {"iptables-nft-save": (0, save_v4, ""), "ipset": (0, SETS, ""), "nft": (0, NFT_TABLES, "")}

    def get_bin_path(self, name, required=False, opt_dirs=None):
        return None if name in self.missing else f"/usr/sbin/{name}"

    def record(self, argv, data):
        tool = argv[0].rsplit("/", 1)[-1]
        return (tool, *argv[1:]) if data is None else (tool, data)

    def answer(self, argv, data):
        tool = argv[0].rsplit("/", 1)[-1]
        if tool in ("ipset", "nft") and argv[1] in ("destroy", "delete"):
            return 0, "", ""
        if tool == "ip" and "show" in argv:
            return 0, IP_JSON["route" if "route" in argv else "addr"], ""
        return self.outputs.get(tool, (0, "", ""))


SCOPE = {"cidrs": ["10.96.0.0/12"], "dummy_interface": "kube-ipvs0"}


def cleanup_task(check_mode=False, node=None, **params):
    """proxy_cleanup's real AnsibleModule for ``params`` (IPv4, the service CIDR scope unless given)."""
    params = {"scope": SCOPE, "family": "ipv4", **params}
    return build(proxy_cleanup, node or NodeCommands(), check_mode=check_mode, **params)


def facts_task(node=None, **params):
    """dataplane_facts' real AnsibleModule for ``params`` (IPv4, the service CIDR scope unless given)."""
    params = {"scope": SCOPE, "family": "ipv4", **params}
    return build(dataplane_facts, node or NodeCommands(), **params)


@pytest.fixture
def kernel(monkeypatch, tmp_path):
    (tmp_path / "proc" / "net").mkdir(parents=True)
    (tmp_path / "proc" / "net" / "ip_vs").write_text("")
    fake = FakeIpvsKernel([*OWNED, FOREIGN])
    links = FakeLinkKernel({"kube-ipvs0": ("dummy", {"10.96.0.1": (IPV4, 32)})})
    reader = functools.partial(_dataplane_node.NodeReader, proc_root=str(tmp_path))
    for module in (proxy_cleanup, dataplane_facts):
        monkeypatch.setattr(module, "IpvsKernel", lambda: fake)
        monkeypatch.setattr(module, "LinkKernel", lambda: links)
        monkeypatch.setattr(module, "NodeReader", reader)
    return fake, links


def writes(module):
    return [command for command in module.commands if command[0].endswith("restore")
            or command[1:2] in (("destroy",), ("delete",))]


def test_check_mode_lists_everything_and_writes_nothing(kernel):
    fake, links = kernel
    module = cleanup_task(check_mode=True, mode="ipvs")
    result = proxy_cleanup.cleanup(module)
    assert result["changed"]
    assert sorted(result["removed"]["ipvs_services"]) == ["tcp/10.96.0.1:443", "udp/10.97.0.10:53"]
    assert result["removed"]["ipsets"] == ["KUBE-CLUSTER-IP", "KUBE-LOOP-BACK"]
    assert result["removed"]["links"] == ["kube-ipvs0"]
    assert "ipset KUBE-CLUSTER-IP" in result["diff"]["before"]
    assert "ipset KUBE-CLUSTER-IP" not in result["diff"]["after"]
    assert writes(module) == [] and fake.applied == [] and links.calls == []


def test_ipvs_cleanup_order_rules_then_sets_then_services_then_link(kernel):
    fake, links = kernel
    module = cleanup_task(mode="ipvs")
    result = proxy_cleanup.cleanup(module)
    done = writes(module)
    assert [command[0] for command in done] == ["iptables-nft-restore", "ipset", "ipset"]
    batch = done[0][1]
    # iptables mode is still live: KUBE-SERVICES stays, only its set rule goes; KUBE-POSTROUTING
    # stays too and loses its KUBE-LOOP-BACK rule.
    assert "-D KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT" in batch
    assert "-D KUBE-POSTROUTING -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE" in batch
    assert "-X KUBE-SERVICES" not in batch and "FOREIGN" not in batch
    assert [command[1:] for command in done[1:]] == [("destroy", "KUBE-CLUSTER-IP"), ("destroy", "KUBE-LOOP-BACK")]
    assert sorted(change[1].label() for change in fake.applied) == ["tcp/10.96.0.1:443", "udp/10.97.0.10:53"]
    assert {change[0] for change in fake.applied} == {DEL_SERVICE}
    assert FOREIGN.key in fake.table
    assert links.calls == [("delete_link", "kube-ipvs0")]
    assert not any(command[0] == "ip" for command in module.commands)  # no drain asked for: no route touched
    assert "nft/ipv4/nat/KUBE-SERVICES" in result["kept_shared"]


def test_drain_points_the_vips_at_the_primary_address_then_waits_then_deletes_the_link(kernel, monkeypatch):
    links = kernel[1]
    slept = []
    monkeypatch.setattr(_dataplane_node.time, "sleep", slept.append)
    module = cleanup_task(mode="ipvs", drain_seconds=3)
    proxy_cleanup.cleanup(module)
    replace = [command for command in module.commands if command[:4] == ("ip", "-4", "route", "replace")]
    assert replace == [("ip", "-4", "route", "replace", "table", "local", "local", "10.96.0.1", "dev", "kube-ipvs0",
                        "proto", "kernel", "scope", "host", "src", "10.0.2.15")]
    assert slept == [3] and links.calls == [("delete_link", "kube-ipvs0")]


def test_drain_seconds_out_of_range_fails_before_reading(kernel):
    module = cleanup_task(mode="ipvs", drain_seconds=301)
    with pytest.raises(KubeIpvsError, match="drain_seconds must be 0-300"):
        proxy_cleanup.cleanup(module)
    assert module.commands == []


def test_iptables_cleanup_leaves_ipvs_objects(kernel):
    fake, links = kernel
    module = cleanup_task(mode="iptables")
    result = proxy_cleanup.cleanup(module)
    assert [command[0] for command in writes(module)] == ["iptables-nft-restore"]
    assert result["removed"]["iptables"][0]["chains"] == ["KUBE-NODEPORTS", "KUBE-SVC-AAAA"]
    assert fake.applied == [] and links.calls == []


class SyncedMeanwhile(NodeCommands):
    """A running kube-proxy rewrites nat KUBE-SERVICES between the cleanup's read and its write, as its
    sync does: the NodePorts jump the cleanup deletes is gone, so iptables refuses the batch (for the
    first ``refusals`` batches)."""

    def __init__(self, refusals):
        super().__init__()
        self.refusals = refusals

    def answer(self, argv, data):
        if argv[0].endswith("iptables-nft-restore") and self.refusals:
            self.refusals -= 1
            rewritten = SAVE_V4.replace("-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n", "")
            self.outputs["iptables-nft-save"] = (0, rewritten, "")
            return 2, "", "iptables-nft-restore: line 2 failed: Bad rule (does a matching rule exist in that chain?)."
        return super().answer(argv, data)


def test_a_table_rewritten_between_read_and_write_is_read_again_and_cleaned_up(kernel):
    node = SyncedMeanwhile(refusals=1)
    module = cleanup_task(mode="iptables", node=node)
    result = proxy_cleanup.cleanup(module)
    batches = [command[1] for command in writes(module)]
    assert len(batches) == 2
    assert "KUBE-NODEPORTS" in batches[0].split("-X KUBE-NODEPORTS")[0]  # the jump to it deleted first
    assert "-j KUBE-NODEPORTS" not in batches[1] and "-X KUBE-NODEPORTS" in batches[1]
    assert sum(1 for command in module.commands if command[0] == "iptables-nft-save") == 2
    assert result["changed"]


def test_a_table_refused_every_time_fails_after_three_reads(kernel):
    module = cleanup_task(mode="iptables", node=SyncedMeanwhile(refusals=99))
    with pytest.raises(KubeIpvsError, match="refused the cleanup of ipv4/nat.*Bad rule.*tried 3 times") as error:
        proxy_cleanup.cleanup(module)
    assert len(writes(module)) == 3
    assert error.value.details["restore_input"]


def test_nftables_cleanup_deletes_only_kube_proxy_tables(kernel):
    module = cleanup_task(mode="nftables")
    result = proxy_cleanup.cleanup(module)
    assert writes(module) == [("nft", "delete", "table", "ip", "kube-proxy")]
    assert result["removed"]["nftables_tables"] == ["ip kube-proxy"]


def test_foreign_reference_fails_before_any_write(kernel):
    fake, links = kernel
    save = SAVE_V4.replace("-A POSTROUTING -j FOREIGN-CHAIN", "-A FOREIGN-CHAIN -j KUBE-SVC-AAAA")
    module = cleanup_task(mode="iptables", node=NodeCommands(save_v4=save))
    with pytest.raises(KubeIpvsError) as raised:
        proxy_cleanup.cleanup(module)
    assert "-A FOREIGN-CHAIN -j KUBE-SVC-AAAA" in raised.value.msg
    assert writes(module) == [] and fake.applied == [] and links.calls == []


@pytest.mark.parametrize("scope", [{"cidrs": ["10.96.0.0/33"]}, {"cidrs": ["ten"]}, {"dummy_interface": "a b"}])
def test_bad_scope_fails_before_anything_is_read(kernel, scope):
    module = cleanup_task(mode="ipvs", scope=scope)
    with pytest.raises(KubeIpvsError):
        proxy_cleanup.cleanup(module)
    assert module.commands == []


def test_facts_report_mixed_mode_and_owned_vips(kernel):
    module = facts_task()
    result = dataplane_facts.gather(module)
    dataplane = result["dataplane"]
    assert not result["changed"]
    assert (dataplane["mode"], dataplane["modes"]) == ("mixed", ["iptables", "ipvs", "nftables"])
    assert dataplane["ipvs"]["owned_vips"] == ["10.96.0.1", "10.97.0.10"]
    assert (dataplane["ipvs"]["owned_services"], dataplane["ipvs"]["foreign_services"]) == (2, 1)
    assert dataplane["ipsets"]["kube_proxy"] == ["KUBE-CLUSTER-IP", "KUBE-LOOP-BACK"]
    assert dataplane["iptables"]["ipv4"]["nft"]["nat"]["service_chains"] == 1
    assert result["ansible_facts"]["kubeipvs_dataplane"] == dataplane
    assert dataplane["kernel"] == os.uname().release
    assert writes(module) == []


EXPECTED = ["tcp/10.96.0.1:443", "udp/10.97.0.10:53"]
MISSING = {"iptables": ["udp/10.97.0.10:53"], "ipvs": [], "nftables": EXPECTED}  # nft answers with no map


def test_facts_check_the_expected_service_ports_per_mode(kernel):
    result = dataplane_facts.gather(facts_task(expect_service_ports=EXPECTED))
    assert result["dataplane"]["modes"] == ["iptables", "ipvs", "nftables"]
    assert (result["expected_service_ports"], result["missing_service_ports"]) == (2, MISSING)
    assert "missing_service_ports" not in result["ansible_facts"]["kubeipvs_dataplane"]
    plain = dataplane_facts.gather(facts_task())
    assert "missing_service_ports" not in plain and "expected_service_ports" not in plain


def test_facts_take_the_expected_service_ports_from_a_state_file(kernel, tmp_path):
    path = tmp_path / "dataplane_facts.json.gz"
    path.write_bytes(gzip.compress(json.dumps({"expect_service_ports": EXPECTED}).encode()))
    module = facts_task(state_src=str(path))
    assert module.params["expect_service_ports"] == EXPECTED
    assert dataplane_facts.gather(module)["missing_service_ports"] == MISSING


@pytest.mark.parametrize(("label", "hint"), [
    ("TCP/10.96.0.1:443", None), ("tcp/10.96.0.1", None), ("tcp/fd00::1:53", None), ("tcp/[10.96.0.1]:53", None),
    ("tcp/10.96.0.1:0", None), ("tcp/10.96.0.1:65536", None), ("icmp/10.96.0.1:1", None),
    ("tcp/010.96.0.1:53", None), ("tcp/10.96.0.1:0443", "tcp/10.96.0.1:443"),
    ("udp/[FD00::A]:53", "udp/[fd00::a]:53"), ("tcp/10.96.0.1:443\n", None), ("", None)])
def test_facts_refuse_a_badly_spelled_expected_port_before_reading_anything(kernel, label, hint):
    module = facts_task(expect_service_ports=[EXPECTED[0], label])
    with pytest.raises(KubeIpvsError) as error:
        dataplane_facts.gather(module)
    assert str(error.value).startswith("expect_service_ports[1]: ") and "protocol/address:port" in str(error.value)
    assert (f"here {hint}" in str(error.value)) if hint else "here" not in str(error.value)
    assert module.commands == []


def test_facts_report_whether_the_kernel_runs_ipv6(kernel, tmp_path):
    assert dataplane_facts.gather(facts_task())["dataplane"]["ipv6"] == {"kernel": False, "disabled": None}
    (tmp_path / "proc" / "net" / "if_inet6").write_text("")
    switch = tmp_path / "proc" / "sys" / "net" / "ipv6" / "conf" / "all" / "disable_ipv6"
    switch.parent.mkdir(parents=True)
    for value, disabled in (("0\n", False), ("1\n", True), ("x\n", None)):
        switch.write_text(value)
        assert dataplane_facts.gather(facts_task())["dataplane"]["ipv6"] == {"kernel": True, "disabled": disabled}


def test_facts_report_which_tools_are_installed(kernel):
    node = NodeCommands(missing={"nft"})
    node.outputs["nft"] = (1, "", "should not run")
    tools = dataplane_facts.gather(facts_task(node=node))["dataplane"]["tools"]
    assert tools == {"ipset": True, "ipvsadm": True, "iptables": True, "nft": False}


def test_facts_without_ip_vs_loaded_report_empty_ipvs(kernel, monkeypatch, tmp_path):
    (tmp_path / "proc" / "net" / "ip_vs").unlink()
    fake, _links = kernel
    fake.read = lambda *args, **kwargs: pytest.fail("IPVS read although ip_vs is not loaded")
    dataplane = dataplane_facts.gather(facts_task())["dataplane"]
    assert dataplane["ipvs"] == {"loaded": False, "known": True, "services": 0, "owned_services": 0,
                                 "foreign_services": 0, "foreign": [], "owned_vips": []}


def test_unreadable_ipvs_is_unknown_for_facts_and_fatal_for_ipvs_cleanup(kernel, monkeypatch):
    def refuse():
        raise OSError(1, "Operation not permitted")

    for module in (proxy_cleanup, dataplane_facts):
        monkeypatch.setattr(module, "IpvsKernel", refuse)
    facts_module = facts_task()
    dataplane = dataplane_facts.gather(facts_module)["dataplane"]
    assert dataplane["ipvs"]["known"] is False
    assert facts_module.warnings and "IPVS" in facts_module.warnings[0]
    with pytest.raises(KubeIpvsError):
        proxy_cleanup.cleanup(cleanup_task(mode="ipvs"))


def test_a_link_of_the_owned_name_that_is_not_dummy_is_never_deleted_nor_owns_services(monkeypatch, tmp_path):
    (tmp_path / "proc" / "net").mkdir(parents=True)
    (tmp_path / "proc" / "net" / "ip_vs").write_text("")
    on_bridge = Service(IPV4, PROTO_TCP, "192.0.2.60", 80)
    fake = FakeIpvsKernel([*OWNED, on_bridge])
    links = FakeLinkKernel({"kube-ipvs0": ("bridge", {"192.0.2.60": (IPV4, 32)})})
    monkeypatch.setattr(proxy_cleanup, "IpvsKernel", lambda: fake)
    monkeypatch.setattr(proxy_cleanup, "LinkKernel", lambda: links)
    monkeypatch.setattr(proxy_cleanup, "NodeReader", functools.partial(_dataplane_node.NodeReader,
                                                                       proc_root=str(tmp_path)))
    module = cleanup_task(mode="ipvs")
    result = proxy_cleanup.cleanup(module)
    assert result["removed"]["links"] == [] and not any(call[0] == "delete_link" for call in links.calls)
    assert on_bridge.key in fake.table, "a service on the bridge's address was taken for kube-proxy's"
    assert any("not dummy" in warning for warning in module.warnings)


def test_facts_report_the_addresses_ipvs_mode_opens_node_ports_on(kernel):
    _fake, links = kernel
    links.links["eth0"] = Link("eth0", 10, "veth", 0x1)
    links.addrs["eth0"] = {"192.168.200.1": (IPV4, 24), "fe80::1": (IPV6, 64), "2001:db8::1": (IPV6, 64)}
    links.links["lo"] = Link("lo", 1, "", 0x1)
    links.addrs["lo"] = {"127.0.0.1": (IPV4, 8), "192.0.2.50": (IPV4, 32)}
    everywhere = dataplane_facts.gather(facts_task())["dataplane"]["node_port_addresses"]
    # kube-ipvs0's 10.96.0.1 is not the node's; neither loopback nor IPv6 link-local addresses count
    assert everywhere == ["192.0.2.50", "192.168.200.1", "2001:db8::1"]
    scoped = dataplane_facts.gather(facts_task(scope={**SCOPE, "node_port_cidrs": ["192.168.0.0/16", "fe80::/10"]}))
    assert scoped["dataplane"]["node_port_addresses"] == ["192.168.200.1", "fe80::1"]
