# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""ipset entry normalisation, save parsing, planning and batch rendering (pure logic)."""

from __future__ import annotations

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.pure import _ipset as ipset
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import IPV4, IPV6

# (entry, type, family, expected form as `ipset save` prints it)
ENTRIES = [
    ("10.96.0.10,80", "hash:ip,port", IPV4, "10.96.0.10,tcp:80"),
    ("10.96.0.10,tcp:80", "hash:ip,port", IPV4, "10.96.0.10,tcp:80"),
    ("10.96.0.10,UDP:53", "hash:ip,port", IPV4, "10.96.0.10,udp:53"),
    ("10.96.0.10,sctp:9000", "hash:ip,port", IPV4, "10.96.0.10,sctp:9000"),
    ("10.96.0.10/32,udp:0", "hash:ip,port", IPV4, "10.96.0.10,udp:0"),
    ("10.96.0.10,tcp:80,10.244.1.5", "hash:ip,port,ip", IPV4, "10.96.0.10,tcp:80,10.244.1.5"),
    ("10.96.0.10,80,10.244.1.5/32", "hash:ip,port,ip", IPV4, "10.96.0.10,tcp:80,10.244.1.5"),
    ("10.0.0.1,80,10.1.0.7/16", "hash:ip,port,net", IPV4, "10.0.0.1,tcp:80,10.1.0.0/16"),
    ("10.0.0.1,udp:53,10.1.0.1/32", "hash:ip,port,net", IPV4, "10.0.0.1,udp:53,10.1.0.1"),
    ("10.0.0.5/24", "hash:net", IPV4, "10.0.0.0/24"),
    ("10.0.0.1/32", "hash:net", IPV4, "10.0.0.1"),
    ("30080", "bitmap:port", IPV4, "30080"),
    ("tcp:30081", "bitmap:port", IPV4, "30081"),
    ("2001:0db8:0:0::1", "hash:ip", IPV6, "2001:db8::1"),
    ("2001:db8:0:0::1,tcp:80,2001:0db8::0002", "hash:ip,port,ip", IPV6, "2001:db8::1,tcp:80,2001:db8::2"),
    ("2001:db8::1/128", "hash:ip", IPV6, "2001:db8::1"),
    ("2001:db8::5/64", "hash:net", IPV6, "2001:db8::/64"),
    # ipset prints IPv4-mapped and IPv4-compatible IPv6 addresses with a dotted quad (inet_ntop)
    ("::ffff:a00:1", "hash:ip", IPV6, "::ffff:10.0.0.1"),
    ("::ffff:0:1", "hash:ip", IPV6, "::ffff:0.0.0.1"),
    ("::102:304", "hash:ip", IPV6, "::1.2.3.4"),
    ("::1:0", "hash:ip", IPV6, "::0.1.0.0"),
    ("::1", "hash:ip", IPV6, "::1"),
    ("::1:0:0", "hash:ip", IPV6, "::1:0:0"),
    ("64:ff9b::1.2.3.4", "hash:ip", IPV6, "64:ff9b::102:304"),
    ("::ffff:10.0.0.7/120", "hash:net", IPV6, "::ffff:10.0.0.0/120"),
    ("::ffff:10.0.0.7/128", "hash:net", IPV6, "::ffff:10.0.0.7"),
    ("10.0.0.1,0x10", "hash:ip,mark", IPV4, "10.0.0.1,0x00000010"),
    ("aa:bb:cc:dd:ee:ff", "hash:mac", IPV4, "AA:BB:CC:DD:EE:FF"),
]


@pytest.mark.parametrize(("entry", "set_type", "family", "expected"), ENTRIES)
def test_entries_normalise_to_the_printed_form(entry, set_type, family, expected):
    assert ipset.normalise_entry(entry, set_type, family, (0, 65535) if set_type == "bitmap:port" else None) == expected


BAD_ENTRIES = [
    ("10.96.0.10", "hash:ip,port", IPV4, "expected 2 comma-separated"),
    ("10.96.0.10,icmp:8", "hash:ip,port", IPV4, "protocol 'icmp'"),
    ("10.96.0.10,tcp:70000", "hash:ip,port", IPV4, "not a port number"),
    ("10.0.0.0/24", "hash:ip", IPV4, "is a network"),
    ("2001:db8::1", "hash:ip", IPV4, "not an IPv4 address"),
    ("10.0.0.1", "hash:ip", IPV6, "not an IPv6 address"),
    ("not-an-ip", "hash:net", IPV4, "not an IP address or CIDR"),
    ("0.0.0.0/0", "hash:net", IPV4, "/0"),
    ("10.0.0.1,80,", "hash:ip,port,ip", IPV4, "expected 3"),
    ("80000", "bitmap:port", IPV4, "not a port number"),
]


@pytest.mark.parametrize(("entry", "set_type", "family", "message"), BAD_ENTRIES)
def test_entries_that_do_not_match_the_type_fail_clearly(entry, set_type, family, message):
    with pytest.raises(KubeIpvsError, match=message):
        ipset.normalise_entry(entry, set_type, family, (0, 65535) if set_type == "bitmap:port" else None)


def test_bitmap_port_entries_outside_the_range_fail():
    with pytest.raises(KubeIpvsError, match=r"outside the set's range 30000-32767"):
        ipset.normalise_entry("80", "bitmap:port", IPV4, (30000, 32767))


def test_one_bad_entry_fails_the_whole_list():
    with pytest.raises(KubeIpvsError, match=r"10\.0\.0\.300"):
        ipset.normalise_entries(["10.0.0.1", "10.0.0.300"], "hash:ip")


SAVE = """create KUBE-LOOP-BACK hash:ip,port,ip family inet hashsize 4096 maxelem 65536 bucketsize 12 initval 0x1
add KUBE-LOOP-BACK 10.244.1.5,tcp:80,10.244.1.5
add KUBE-LOOP-BACK 10.244.1.6,udp:53,10.244.1.6 timeout 29
create OTHER hash:ip family inet hashsize 1024 maxelem 65536
add OTHER 10.0.0.1
create c bitmap:port range 0-65535 timeout 300 comment
add c 30080 timeout 299 comment "x y"
"""


def test_save_output_is_parsed_per_set_and_drops_per_entry_extensions():
    header, members = ipset.parse_save(SAVE, "KUBE-LOOP-BACK")
    assert header == {"type": "hash:ip,port,ip", "family": "inet", "hashsize": 4096, "maxelem": 65536}
    assert members == {"10.244.1.5,tcp:80,10.244.1.5", "10.244.1.6,udp:53,10.244.1.6"}
    header, members = ipset.parse_save(SAVE, "c")
    assert header == {"type": "bitmap:port", "range": "0-65535", "timeout": 300, "comment": True}
    assert members == {"30080"}
    assert ipset.parse_save(SAVE, "missing") == (None, set())


HEADER = ipset.desired_header("hash:ip,port,ip", IPV4, 1024, 65536, None, False, None)


# (name, current header, current members, desired members, exclusive, threshold, method, adds, removes)
PLANS = [
    ("missing set is created", None, set(), {"a"}, True, 10, "create", 1, 0),
    ("equal is a no-op", HEADER, {"a", "b"}, {"a", "b"}, True, 10, "none", 0, 0),
    ("grown hashsize is not a difference", dict(HEADER, hashsize=8192), {"a"}, {"a"}, True, 10, "none", 0, 0),
    ("small change is incremental", HEADER, {"a", "b"}, {"a", "c"}, True, 10, "incremental", 1, 1),
    ("non-exclusive never removes", HEADER, {"a", "b"}, {"c"}, False, 10, "incremental", 1, 0),
    ("large change swaps", HEADER, set(), {str(n) for n in range(11)}, True, 10, "swap", 11, 0),
    ("option change swaps", dict(HEADER, maxelem=1000), {"a"}, {"a"}, True, 10, "swap", 0, 0),
    (
        "type change of another kind re-creates",
        {"type": "hash:ip", "family": "inet", "hashsize": 1024, "maxelem": 65536},
        {"a"},
        {"a"},
        True,
        10,
        "recreate",
        0,
        0,
    ),
]


@pytest.mark.parametrize(
    ("current_header", "current", "desired", "exclusive", "threshold", "method", "adds", "removes"),
    [case[1:] for case in PLANS],
    ids=[case[0] for case in PLANS],
)
def test_plans(current_header, current, desired, exclusive, threshold, method, adds, removes):
    plan = ipset.plan_set(HEADER, desired, current_header, current, exclusive, threshold)
    assert (plan.method, len(plan.to_add), len(plan.to_remove)) == (method, adds, removes)


def test_swap_batch_builds_the_scratch_set_then_swaps_and_destroys_it():
    plan = ipset.plan_set(HEADER, {"b", "a"}, dict(HEADER, maxelem=10), {"a"}, True)
    scratch = ipset.temporary_set_name("KUBE-LOOP-BACK")
    lines = ipset.render_batch("KUBE-LOOP-BACK", HEADER, plan).splitlines()
    assert lines[:2] == [
        f"destroy {scratch}",
        f"create {scratch} hash:ip,port,ip family inet hashsize 1024 maxelem 65536",
    ]
    assert sorted(lines[2:-2]) == [f"add {scratch} a", f"add {scratch} b"]
    assert lines[-2:] == [f"swap {scratch} KUBE-LOOP-BACK", f"destroy {scratch}"]


def test_incremental_batch_only_carries_the_changes():
    plan = ipset.plan_set(HEADER, {"a", "c"}, HEADER, {"a", "b"}, True)
    assert ipset.render_batch("S", HEADER, plan) == "del S b\nadd S c\n"


@pytest.mark.parametrize("name", ["KUBE-LOAD-BALANCER-SOURCE-CIDR", "KUBE-6-LOAD-BALANCER-SOURCE-CID", "x"])
def test_scratch_names_fit_the_kernel_limit_and_differ_from_the_set(name):
    scratch = ipset.temporary_set_name(name)
    assert len(scratch) <= 31
    assert scratch != name
    assert scratch == ipset.temporary_set_name(name)


def test_bitmap_header_needs_a_range_and_hash_header_rounds_hashsize():
    with pytest.raises(KubeIpvsError, match="needs range"):
        ipset.desired_header("bitmap:port", IPV4, 1024, 65536, None, False, None)
    assert ipset.desired_header("hash:ip", IPV6, 1000, 10, None, True, 60) == {
        "type": "hash:ip",
        "family": "inet6",
        "hashsize": 1024,
        "maxelem": 10,
        "timeout": 60,
        "comment": True,
    }


def test_ranges_are_validated():
    assert ipset.parse_range("0-65535", "bitmap:port") == (0, 65535)
    with pytest.raises(KubeIpvsError, match="FROM-TO"):
        ipset.parse_range("65535-0", "bitmap:port")


IPTABLES_SAVE = """*nat
:POSTROUTING ACCEPT [0:0]
-A KUBE-POSTROUTING -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE
-A KUBE-POSTROUTING -m set --match-set KUBE-LOOP-BACK-2 dst,dst,src -j MASQUERADE
COMMIT
*filter
-A INPUT -m comment --comment "mentions KUBE-LOOP-BACK" -j ACCEPT
COMMIT
"""


def test_referencing_rules_match_the_set_name_exactly():
    assert ipset.referencing_rules(IPTABLES_SAVE, "KUBE-LOOP-BACK") == [
        "nat: -A KUBE-POSTROUTING -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE"
    ]


def test_kernel_types_come_from_ipset_help():
    help_text = "Usage...\nSupported set types:\n    hash:ip,port\t7\tnetmask\n    bitmap:port\t\t3\tskbinfo\n"
    assert ipset.parse_kernel_types(help_text) == {"hash:ip,port", "bitmap:port"}


def test_diff_description_is_short_at_scale():
    entries = [str(n) for n in range(100000)]
    text = ipset.describe(HEADER, 100000, entries, "added", 5)
    assert "# members: 100000" in text
    assert "# added (first 5 of 100000):" in text
    assert len(text.splitlines()) == 8


def test_members_file_ignores_comments_and_blank_lines():
    assert ipset.read_members_file("# head\n10.0.0.1\n\n10.0.0.2  # tail\n") == ["10.0.0.1", "10.0.0.2"]


@pytest.mark.parametrize("set_type", ["hash:ip", "hash:ip,port", "hash:ip,port,ip"])
def test_fast_path_agrees_with_the_full_parser(set_type):
    parts = {
        "hash:ip": ["10.0.0.1", "10.0.0.3/32", "255.255.255.255", "0.0.0.0"],
        "hash:ip,port": ["10.0.0.1,tcp:80", "10.0.0.1,80", "10.0.0.1,tcp:080", "10.0.0.1,udp:65535"],
        "hash:ip,port,ip": ["10.0.0.1,tcp:80,10.0.0.2", "10.0.0.1,SCTP:0,10.0.0.2"],
    }[set_type]
    fast = ipset.normalise_entries(parts, set_type)
    assert fast == {ipset.normalise_entry(entry, set_type) for entry in parts}
    with pytest.raises(KubeIpvsError):
        ipset.normalise_entries([*parts, "10.0.0.256" + parts[0][8:]], set_type)


def test_bitmap_ip_range_is_checked_for_every_entry():
    with pytest.raises(KubeIpvsError, match="outside"):
        ipset.normalise_entries(
            ["10.0.0.1", "10.0.1.1"], "bitmap:ip", IPV4, ipset.parse_range("10.0.0.0/24", "bitmap:ip")
        )


def test_parse_save_all_reads_only_the_named_sets_in_one_pass():
    current = ipset.parse_save_all(SAVE, ["KUBE-LOOP-BACK", "c", "MISSING"])
    assert set(current) == {"KUBE-LOOP-BACK", "c", "MISSING"}
    assert current["KUBE-LOOP-BACK"] == ipset.parse_save(SAVE, "KUBE-LOOP-BACK")
    assert current["c"] == ipset.parse_save(SAVE, "c")
    assert current["MISSING"] == (None, set())


def test_set_specs_take_left_out_keys_from_the_top_level():
    params = dict.fromkeys(ipset.INHERITED_KEYS)
    params.update(family="inet6", hashsize=2048, state="present", exclusive=False)
    params["sets"] = [
        dict(dict.fromkeys(ipset.INHERITED_KEYS), name="A", type="hash:ip", members=None, members_file=None),
        dict(dict.fromkeys(ipset.INHERITED_KEYS), name="B", family="inet", exclusive=True, members=["x"]),
    ]
    first, second = ipset.merge_set_specs(params)
    assert (first["family"], first["hashsize"], first["exclusive"], first["type"]) == ("inet6", 2048, False, "hash:ip")
    assert (second["family"], second["exclusive"], second["members"]) == ("inet", True, ["x"])


def test_single_set_params_are_a_one_element_spec_list():
    params = dict.fromkeys(ipset.INHERITED_KEYS, None)
    params.update(name="S", members=["10.0.0.1"], members_file=None, sets=None)
    (only,) = ipset.merge_set_specs(params)
    assert (only["name"], only["members"]) == ("S", ["10.0.0.1"])
    assert set(only) == {"name", "members", "members_file", *ipset.INHERITED_KEYS}


def test_batch_locates_the_set_of_a_refused_line():
    batch = ipset.Batch()
    batch.add("A", "create", "create A hash:ip\nadd A 10.0.0.1\n")
    batch.add("B", "none", "")
    batch.add("C", "incremental", "add C 10.0.0.2\n")
    assert batch.text == "create A hash:ip\nadd A 10.0.0.1\nadd C 10.0.0.2\n"
    assert batch.locate(2) == ("A", "create", [])
    assert batch.locate(3) == ("C", "incremental", ["A"])
    assert batch.locate(4) is None
    assert ipset.failed_line("ipset v7.17: Error in line 12: Element cannot be added") == 12
    assert ipset.duplicate_names(["A", "B", "A", "C", "B", "A"]) == ["A", "B"]


# Issue: bad input never runs a command, destroys what exists or half-applies.

HOSTILE_ENTRIES = [
    # an interface part with a newline carried further restore commands
    ("10.0.0.0/8,eth0\nflush FOREIGN", "hash:net,iface", "control character"),
    ("10.0.0.0/8,eth0 timeout 5", "hash:net,iface", "not an interface name"),
    ("10.0.0.0/8,a:b", "hash:net,iface", "not an interface name"),
    ("10.0.0.0/8,0123456789abcdef", "hash:net,iface", "not an interface name"),
    ("10.0.0.0/8,physdev:", "hash:net,iface", "not an interface name"),
    ("10.0.0.1,80\n", "hash:ip,port", "control character"),
    ("10.0.0.1\n", "hash:ip", "control character"),
    ("10.0.0.1,-1", "hash:ip,mark", "not a mark"),
    ("10.0.0.1,0x100000000", "hash:ip,mark", "not a mark"),
    ("10.0.0.1,zz", "hash:ip,mark", "not a mark"),
    ("fe80::1%eth0", "hash:ip", "not an IP address"),
    ("²", "bitmap:port", "not a port number"),
    ("10.0.0.1 nomatch", "hash:ip", "not an IP address"),
]


@pytest.mark.parametrize(("entry", "set_type", "message"), HOSTILE_ENTRIES)
def test_hostile_entries_are_refused(entry, set_type, message):
    family = IPV6 if "fe80" in entry else IPV4
    with pytest.raises(KubeIpvsError, match=message):
        ipset.normalise_entries([entry], set_type, family, (0, 65535) if set_type == "bitmap:port" else None)


def test_interface_members_keep_their_physdev_prefix():
    assert ipset.normalise_entry("10.0.0.5/8,physdev:eth0", "hash:net,iface") == "10.0.0.0/8,physdev:eth0"
    assert ipset.normalise_entry("10.0.0.0/8, kube-ipvs0", "hash:net,iface") == "10.0.0.0/8,kube-ipvs0"


@pytest.mark.parametrize(("hashsize", "maxelem", "timeout", "message"), [
    (0, 65536, None, "hashsize"), (-5, 65536, None, "hashsize"), (1024, 0, None, "maxelem"),
    (1024, 2 ** 32, None, "maxelem"), (1024, 65536, -1, "timeout"), (1024, 65536, 2147484, "timeout"),
    (2 ** 31 + 1, 65536, None, "hashsize"),
])
def test_options_are_never_silently_defaulted(hashsize, maxelem, timeout, message):
    with pytest.raises(KubeIpvsError, match=message):
        ipset.desired_header("hash:ip", IPV4, hashsize, maxelem, None, False, timeout)


@pytest.mark.parametrize(("text", "message"), [
    ("10.0.0.10-10.0.0.1", "above"), ("2001:db8::1-2001:db8::5", "IPv4"), ("10.0.0.0/8", "more than 65536"),
    ("10.0.0.1-10.0.0.5\n", "control character"), ("30-²", "FROM-TO"),
])
def test_bitmap_ranges_are_whole_and_ascending(text, message):
    set_type = "bitmap:port" if "²" in text else "bitmap:ip"
    with pytest.raises(KubeIpvsError, match=message):
        ipset.parse_range(text, set_type)


@pytest.mark.parametrize("name", ["-exist", "a b", "S\n", "x" * 32, "", "a\"b"])
def test_set_names_are_one_word_that_is_not_an_option(name):
    with pytest.raises(KubeIpvsError, match="set name"):
        ipset.validate_name(name)


def test_a_type_change_builds_the_new_set_before_the_old_one_goes():
    header = {"type": "hash:ip,port", "family": "inet", "hashsize": 1024, "maxelem": 65536}
    old = {"type": "hash:ip", "family": "inet", "hashsize": 1024, "maxelem": 65536}
    plan = ipset.plan_set(header, {"10.0.0.1,tcp:80"}, old, {"10.0.0.1"}, True)
    assert plan.method == "recreate"
    scratch, backup = ipset.temporary_set_name("S"), ipset.backup_set_name("S")
    lines, final = ipset.render_steps("S", header, plan)
    assert lines == [f"destroy {scratch}", f"create {scratch} hash:ip,port family inet hashsize 1024 maxelem 65536",
                     f"add {scratch} 10.0.0.1,tcp:80", f"destroy {backup}", f"rename S {backup}",
                     f"rename {scratch} S"]
    assert final == [f"destroy {backup}"]
    assert not any(line == "destroy S" for line in lines + final)


def test_undo_reverses_what_was_applied_and_names_what_cannot_come_back():
    applied = ["del A 10.0.0.1", "add A 10.0.0.2", "create N hash:ip", "add N 10.0.0.3", "destroy S-tmp1234567",
               "create S-tmp1234567 hash:ip", "swap S-tmp1234567 S", "rename T T-old1234567", "destroy GONE"]
    undo, lost = ipset.undo_lines(applied)
    assert undo == ["rename T-old1234567 T", "swap S-tmp1234567 S", "destroy S-tmp1234567", "destroy N",
                    "del A 10.0.0.2", "add A 10.0.0.1"]
    assert lost == ["GONE"]


def test_destroys_and_clean_ups_come_after_everything_that_can_be_undone():
    header = {"type": "hash:ip", "family": "inet", "hashsize": 1024, "maxelem": 65536}
    desired = [ipset.DesiredSet("OLD", "absent"),
               ipset.DesiredSet("W", "present", dict(header, maxelem=10), {"1.1.1.1"}),
               ipset.DesiredSet("I", "present", header, {"1.1.1.2"})]
    current = {"OLD": (header, set()), "W": (header, set()), "I": (header, set())}
    plans = {wanted.name: ipset.plan_one(wanted, current[wanted.name], 1000) for wanted in desired}
    batch = ipset.batch_of(desired, plans, current)
    assert [(name, method) for name, method, _text in batch.chunks] == [
        ("W", "swap"), ("I", "incremental"), ("OLD", "destroy"), ("W", "cleanup")]
    assert batch.text.splitlines()[-2:] == ["destroy OLD", f"destroy {ipset.temporary_set_name('W')}"]


def test_more_members_than_maxelem_fails_before_anything_runs():
    header = {"type": "hash:ip", "family": "inet", "hashsize": 1024, "maxelem": 2}
    wanted = ipset.DesiredSet("S", "present", header, {"10.0.0.1", "10.0.0.2", "10.0.0.3"})
    plans = {"S": ipset.plan_one(wanted, (None, set()), 1000)}
    with pytest.raises(KubeIpvsError, match="3 members, more than its maxelem 2"):
        ipset.check_capacity([wanted], plans)


def test_references_come_from_ipset_list_t():
    text = "Name: A\nType: hash:ip\nReferences: 2\nNumber of entries: 0\n\nName: B\nReferences: 0\n"
    assert ipset.parse_references(text) == {"A": 2, "B": 0}
