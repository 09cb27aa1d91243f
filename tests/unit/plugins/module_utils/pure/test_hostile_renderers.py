# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Property tests of the validators and renderers in pure/: any input is a clean KubeIpvsError (or the
renderers' documented ValueError) or output that reads back equal to what went in; and what
kube_proxy_state renders from any API objects is input the node-side modules accept as it is."""

from __future__ import annotations

import shlex

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.pure import _ipset as ipset
from ansible_collections.kubeipvs.node.plugins.module_utils.pure import _iptables as ipt
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import IPV4, IPV6
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._ipvs_input import (
    SERVICE_KEYS,
    normalize_service,
    normalize_services,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kmod import (
    parse_modprobe_options,
    parse_modules_load,
    render_modprobe_options,
    render_modules_load,
    validate_params,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_config import (
    default_config,
    merge_config,
    parse_config,
    patch_from_options,
    render_config,
    validate_config,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_iptables import iptables_state
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_nftables import nftables_state
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_state import node_state
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._links import canonical_host, normalize_addresses
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._nftables import check_content
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._sysctl import (
    key_parts,
    parse_dropin,
    render_dropin,
    value_text,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._text import CONTROL, MODULE_NAME, MODULE_PARAMETER
from ansible_collections.kubeipvs.node.tests.unit.hostile import anything, hostile_numbers, hostile_text, wrong_types
from hypothesis import event, given, settings
from hypothesis import strategies as st

EXAMPLES = 150


@st.composite
def with_one_hostile(draw, valid, paths, hostile=None):
    """A value drawn from ``valid`` whole about half the time, else with the field at one of ``paths``
    (tuples of keys and list indexes) replaced by a hostile value: input that mostly gets through,
    so the properties that check output run often, and whose one bad field is always caught."""
    value = draw(valid)
    if draw(st.booleans()):
        path = draw(st.sampled_from(paths))
        target = value
        try:
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = draw(hostile if hostile is not None else anything())
        except (KeyError, IndexError, TypeError):
            pass  # the drawn value has no such field
    return value


printable = st.text(st.characters(min_codepoint=32, max_codepoint=0x2fff, blacklist_categories=("Cs",)), max_size=20)


# --- ipset -------------------------------------------------------------------------------------------

ENTRY_TYPES = sorted(ipset.SET_TYPES)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)


@settings(max_examples=EXAMPLES)
@given(entry=st.one_of(anything(), st.lists(st.one_of(ipv4, st.integers(0, 70000).map(str), st.just("eth0")),
                                            min_size=1, max_size=3).map(",".join)),
       set_type=st.sampled_from(ENTRY_TYPES), family=st.sampled_from([IPV4, IPV6]))
def test_ipset_entries_are_refused_or_a_fixed_point(entry, set_type, family):
    port_range = (0, 65535) if set_type == "bitmap:port" else None
    try:
        normal = ipset.normalise_entry(entry, set_type, family, port_range)
    except KubeIpvsError:
        return
    # what the kernel prints reads back as itself, one word of a restore line
    assert ipset.normalise_entry(normal, set_type, family, port_range) == normal
    assert CONTROL.search(normal) is None and " " not in normal
    assert ipset.normalise_entries([normal], set_type, family, port_range) == {normal}


@settings(max_examples=EXAMPLES)
@given(set_type=st.sampled_from(ENTRY_TYPES), family=st.sampled_from([IPV4, IPV6]),
       hashsize=st.one_of(st.none(), hostile_numbers), maxelem=st.one_of(st.none(), hostile_numbers),
       timeout=st.one_of(st.none(), hostile_numbers), comment=st.booleans(),
       range_text=st.one_of(st.none(), st.just("0-65535"), st.just("10.0.0.0/30"), hostile_text()))
def test_ipset_headers_are_refused_or_read_back(set_type, family, hashsize, maxelem, timeout, comment, range_text):
    try:
        port_range = ipset.parse_range(range_text, set_type) if range_text is not None else (
            (0, 65535) if set_type == "bitmap:port" else None)
        header = ipset.desired_header(set_type, family, hashsize, maxelem, port_range, comment, timeout)
    except KubeIpvsError:
        return
    line = ipset.render_create("S", header)
    assert CONTROL.search(line) is None
    assert ipset._parse_create(shlex.split(line)) == header  # pylint: disable=protected-access


# --- iptables ----------------------------------------------------------------------------------------

@settings(max_examples=EXAMPLES)
@given(tokens=st.lists(st.one_of(printable, st.sampled_from(['"', "\\", "'", "a b", "", "-j", "!"])), min_size=1,
                       max_size=6))
def test_iptables_tokens_render_and_split_back_equal(tokens):
    if any(CONTROL.search(token) for token in tokens):
        return
    rendered = ipt.render_tokens(tokens)
    assert ipt.split_rule(rendered) == tuple(tokens)  # as a task writes it
    assert ipt.split_saved(rendered) == tuple(tokens)  # as iptables-restore reads it


RULE_SAMPLES = st.sampled_from(["-j RETURN", "-j MARK --or-mark 0x4000", "-s 10.0.0.1 -j DROP",
                                "-m mark --mark 0x1/0x1 -j ACCEPT", '-m comment --comment "x"'])


@settings(max_examples=EXAMPLES)
@given(rule=st.one_of(hostile_text(RULE_SAMPLES), st.lists(hostile_text(), max_size=4), wrong_types),
       family=st.sampled_from([IPV4, IPV6]))
def test_iptables_rules_are_refused_or_a_fixed_point(rule, family):
    try:
        tokens = ipt.normalise_rule(rule, family)
    except KubeIpvsError:
        return
    except TypeError:
        assert not isinstance(rule, (str, list))  # the module's argument spec gives strings only
        return
    rendered = ipt.render_tokens(tokens)
    assert "\n" not in rendered and "\x00" not in rendered
    assert ipt.normalise_rule(rendered, family) == tokens


# --- links, sysctl, kernel modules ------------------------------------------------------------------

@settings(max_examples=EXAMPLES)
@given(value=st.one_of(anything(), ipv4, ipv6, ipv6.map(lambda text: text + "/128")))
def test_link_addresses_are_refused_or_a_fixed_point(value):
    try:
        family, text = canonical_host(value)
    except KubeIpvsError:
        return
    assert canonical_host(text) == (family, text)
    assert normalize_addresses([value, text]) == {text: family}


@settings(max_examples=EXAMPLES)
@given(values=st.dictionaries(st.one_of(st.sampled_from(["net.ipv4.ip_forward", "vm.swappiness"]), hostile_text()),
                              st.one_of(st.integers(-5, 70000), anything(),
                                        st.lists(st.integers(0, 9), max_size=3)), max_size=4))
def test_sysctl_drop_ins_read_back_equal(values):
    try:
        texts = {key: value_text(value, key) for key, value in values.items() if key_parts(key)}
    except KubeIpvsError:
        return
    texts = {key.strip(" "): text for key, text in texts.items() if text}
    assert parse_dropin(render_dropin(texts, "sysctl")) == {key.replace("/", "."): text for key, text in texts.items()}


@settings(max_examples=EXAMPLES)
@given(options=st.dictionaries(st.one_of(st.sampled_from(["ip_vs", "nf_conntrack"]), hostile_text()),
                               st.dictionaries(st.one_of(st.sampled_from(["hashsize", "acct"]), hostile_text()),
                                               st.one_of(st.integers(0, 10 ** 6), anything()), max_size=2),
                               max_size=3))
def test_modprobe_files_read_back_equal(options):
    try:
        for name, params in options.items():
            MODULE_NAME.check(name, "name")
            validate_params(params)
    except KubeIpvsError:
        return
    wanted = {name.replace("-", "_"): {key: str(value).strip() if not isinstance(value, bool) else str(int(value))
                                       for key, value in params.items()} for name, params in options.items()}
    wanted = {name: params for name, params in wanted.items() if params}
    assert parse_modprobe_options(render_modprobe_options(wanted, "x")) == wanted
    names = sorted({name.replace("-", "_") for name in options})
    assert parse_modules_load(render_modules_load(names, "x")) == names
    assert all(MODULE_PARAMETER.matches(key) for params in wanted.values() for key in params)


# --- IPVS input --------------------------------------------------------------------------------------

def check_ipvs_fixed_point(entries):
    """Refused with a KubeIpvsError, or each service, given back as the module reports it, is itself."""
    try:
        desired, absent = normalize_services(entries)
    except KubeIpvsError:
        event("refused")
        return
    event("accepted")
    for service in desired + absent:
        # the service as the module reports it, given back as input, is the same service
        shown = service.as_dict()
        entry = {key: value for key, value in shown.items() if key in SERVICE_KEYS and key != "real_servers"}
        entry["real_servers"] = [{key: dest[key] for key in ("address", "port", "weight", "forwarding")}
                                 for dest in shown["real_servers"]]
        again, _state = normalize_service(entry, "again")
        assert again.key == service.key and set(again.dests) == set(service.dests)


@settings(max_examples=EXAMPLES)
@given(entries=st.one_of(wrong_types, st.lists(st.one_of(wrong_types, st.dictionaries(
    st.one_of(st.sampled_from(["address", "port", "protocol", "scheduler", "real_servers", "fwmark", "netmask",
                               "persistence_timeout", "state", "family", "scheduler_flags"]), hostile_text(),
              hostile_numbers),
    st.one_of(anything(), st.just("10.96.0.1"), st.just(80), st.lists(st.dictionaries(
        st.sampled_from(["address", "port", "weight", "forwarding"]), anything(), max_size=4), max_size=2)),
    max_size=8)), max_size=3)))
def test_ipvs_services_are_refused_or_a_fixed_point(entries):
    check_ipvs_fixed_point(entries)


VALID_SERVICE = with_one_hostile(st.fixed_dictionaries(
    {"address": st.sampled_from(["10.96.0.1", "10.96.0.2/32"]), "port": st.integers(1, 65535),
     "protocol": st.sampled_from(["tcp", "udp", "sctp"]), "scheduler": st.sampled_from(["rr", "wrr", "sh", "mh"]),
     "persistence_timeout": st.integers(0, 2147483), "netmask": st.sampled_from(["255.255.255.0", "24"]),
     "real_servers": st.lists(st.fixed_dictionaries(
         {"address": st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3/32"]), "port": st.integers(1, 65535),
          "weight": st.integers(0, 65535), "forwarding": st.sampled_from(["nat", "route", "tunnel"])}),
         max_size=3, unique_by=lambda dest: (dest["address"].split("/")[0], dest["port"]))}),
    [("address",), ("port",), ("protocol",), ("scheduler",), ("persistence_timeout",), ("netmask",),
     ("real_servers",), ("real_servers", 0, "address"), ("real_servers", 0, "port"), ("real_servers", 0, "weight"),
     ("real_servers", 0, "forwarding"), ("family",), ("fwmark",), ("state",), ("scheduler_flags",)])


def service_key(entry):
    """What makes two entries the same service (duplicates are refused, rightly: draw none)."""
    return str(entry.get("address")).split("/", maxsplit=1)[0], str(entry.get("port")), str(entry.get("protocol"))


@settings(max_examples=EXAMPLES)
@given(entries=st.lists(VALID_SERVICE, max_size=3, unique_by=service_key))
def test_mostly_valid_ipvs_services_are_refused_or_a_fixed_point(entries):
    check_ipvs_fixed_point(entries)


# --- kube-proxy's configuration ----------------------------------------------------------------------

FIELDS = st.sampled_from(["mode", "ipvs", "conntrack", "kind", "apiVersion", "iptables", "clusterCIDR",
                          "nodePortAddresses", "featureGates", "logging", "oomScoreAdj", "bindAddress", "colour"])
NESTED = st.sampled_from(["scheduler", "strictARP", "syncPeriod", "maxPerCore", "min", "masqueradeBit",
                          "excludeCIDRs", "tcpTimeout", "verbosity", "unknownField"])


VALID_CONFIG = with_one_hostile(st.fixed_dictionaries({}, optional={
    "mode": st.sampled_from(["ipvs", "", "iptables", "nftables"]),
    "ipvs": st.fixed_dictionaries({}, optional={"scheduler": st.sampled_from(["rr", "sh", ""]),
                                                "strictARP": st.booleans(),
                                                "syncPeriod": st.sampled_from(["30s", "1m0s"]),
                                                "excludeCIDRs": st.just(["10.0.0.0/8"])}),
    "conntrack": st.fixed_dictionaries({}, optional={"maxPerCore": st.integers(0, 2 ** 31 - 1),
                                                     "tcpEstablishedTimeout": st.just("24h0m0s")}),
    "clusterCIDR": st.just("10.244.0.0/16"), "oomScoreAdj": st.integers(-1000, 1000)}),
    [("mode",), ("ipvs",), ("ipvs", "scheduler"), ("ipvs", "strictARP"), ("ipvs", "syncPeriod"),
     ("ipvs", "excludeCIDRs"), ("conntrack",), ("conntrack", "maxPerCore"), ("clusterCIDR",), ("oomScoreAdj",),
     ("kind",), ("apiVersion",), ("colour",), ("ipvs", "unknownField")])


NESTED_VALUES = st.one_of(anything(), st.sampled_from(["rr", "30s", True, 0, 14, "ipvs", ["10.0.0.0/8"]]))
FIELD_VALUES = st.one_of(anything(), st.dictionaries(NESTED, NESTED_VALUES, max_size=3),
                         st.sampled_from(["ipvs", "", "iptables", "10.244.0.0/16"]))
OPTIONS = st.fixed_dictionaries({}, optional={"mode": anything(st.just("ipvs")),
                                              "ipvs_scheduler": anything(st.just("rr")),
                                              "conntrack_max_per_core": hostile_numbers})


@settings(max_examples=EXAMPLES)
@given(merge=st.one_of(VALID_CONFIG, st.dictionaries(FIELDS, FIELD_VALUES, max_size=4)), options=OPTIONS)
def test_kube_proxy_config_is_refused_or_reads_back_equal(merge, options):
    try:
        patch = patch_from_options(options, merge)
        merged = merge_config(default_config(), patch)
        validate_config(merged, patch)
    except KubeIpvsError:
        event("refused")
        return
    event("written")
    text = render_config(merged)
    assert parse_config(text, "cm") == merged
    validate_config(parse_config(text, "cm"))


# --- kube_proxy_state: API objects in, node-module input out -------------------------------------------

@st.composite
def valid_service(draw):
    port = {"port": draw(st.integers(1, 65535)), "protocol": draw(st.sampled_from(["TCP", "UDP", "SCTP"])),
            "name": draw(st.sampled_from(["", "http", "dns-tcp"]))}
    spec = {"type": draw(st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer"])), "ports": [port],
            "clusterIP": draw(st.sampled_from(["10.96.0.10", "fd00::10"])),
            "externalIPs": draw(st.lists(st.just("192.0.2.5"), max_size=1)), "healthCheckNodePort": 0}
    if spec["type"] != "ClusterIP":
        port["nodePort"] = draw(st.integers(30000, 32767))
    if draw(st.booleans()):
        spec.update(sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}})
    return {"metadata": {"name": draw(st.sampled_from(["web", "kube-dns"])), "namespace": "default"}, "spec": spec,
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}}


def api_service():
    return with_one_hostile(valid_service(), [
        ("metadata", "name"), ("metadata", "namespace"), ("spec", "ports", 0, "port"), ("spec", "ports", 0, "protocol"),
        ("spec", "ports", 0, "name"), ("spec", "ports", 0, "nodePort"), ("spec", "clusterIP"), ("spec", "externalIPs"),
        ("spec", "sessionAffinityConfig", "clientIP", "timeoutSeconds"), ("spec", "healthCheckNodePort"),
        ("status", "loadBalancer", "ingress", 0, "ip"), ("spec", "ports")])


@st.composite
def valid_slice(draw):
    family = draw(st.sampled_from(["IPv4", "IPv6"]))
    return {"metadata": {"name": "web-1", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": draw(st.sampled_from(["web", "kube-dns"]))}},
            "addressType": family,
            "endpoints": [{"addresses": ["10.244.1.5" if family == "IPv4" else "fd00::5"],
                           "conditions": {"ready": True}, "nodeName": "node1"}],
            "ports": [{"name": draw(st.sampled_from(["", "http"])), "port": draw(st.integers(1, 65535)),
                       "protocol": "TCP"}]}


def api_slice():
    return with_one_hostile(valid_slice(), [
        ("metadata", "labels", "kubernetes.io/service-name"), ("metadata", "namespace"),
        ("endpoints", 0, "addresses", 0), ("endpoints", 0, "addresses"), ("ports", 0, "port"),
        ("ports", 0, "protocol"), ("ports", 0, "name"), ("endpoints",)])


@settings(max_examples=EXAMPLES)
@given(services=st.lists(api_service(), max_size=2), slices=st.lists(api_slice(), max_size=2),
       node_ips=with_one_hostile(st.lists(st.sampled_from(["192.0.2.11", "2001:db8::11"]), min_size=1, max_size=2),
                                 [(0,), (1,)]))
def test_kube_proxy_state_renders_only_what_the_node_modules_accept(services, slices, node_ips):
    try:
        ipvs = node_state(services, slices, "node1", node_ips)
        chains = iptables_state(services, slices, "node1", node_ips)
        tables = nftables_state(services, slices, "node1", node_ips)
    except ValueError:
        event("refused")
        return  # the module turns it into its failure, naming the object
    event("rendered")
    normalize_addresses(ipvs["dummy_interface"]["addresses"])
    normalize_services(ipvs["ipvs_sync"]["services"])
    for name, members in ipvs["ipsets"].items():
        set_type = ipvs["ipset_types"][name]
        family = IPV6 if name.startswith("KUBE-6-") else IPV4
        port_range = (0, 65535) if set_type == "bitmap:port" else None
        assert ipset.normalise_entries(members, set_type, family, port_range) == set(members)
    for family, entries in chains.items():
        for entry in entries:
            ipt.validate_chain_name(entry["table"], entry["chain"])
            for rule in entry.get("rules", []):
                ipt.normalise_rule(rule, family)
    for table in tables.values():
        check_content(table["content"])


def test_hostile_strategies_reach_the_success_paths():
    # The properties above check output only when the input was accepted: make sure it sometimes is.
    assert ipset.normalise_entry("10.0.0.1,80", "hash:ip,port") == "10.0.0.1,tcp:80"
    with pytest.raises(KubeIpvsError):
        ipset.normalise_entry("10.0.0.1,80\n", "hash:ip,port")
