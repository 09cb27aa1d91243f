#!/usr/bin/python
# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: dummy_interface
short_description: The dummy link kube-proxy IPVS mode binds service VIPs to, with its host addresses
version_added: 0.1.0
author: kubeipvs.node maintainers (@kubeipvs)
description:
  - Creates the link as kube-proxy does (type dummy, left down, C(BROADCAST,NOARP)) and puts the
    listed VIPs on it as /32 or /128 host addresses.
  - Reads the addresses once and adds or removes only the difference, hundreds of rtnetlink
    messages per system call. An address already on the link is never added again (adding to a
    link costs time in proportion to the addresses it already holds), so 10k+ addresses in one call are fine.
  - Refuses to touch an existing link of another type.
  - Talks to the kernel through hand-packed rtnetlink messages; needs no Python library on the node.
extends_documentation_fragment:
  - kubeipvs.node.state_src
  - kubeipvs.node.attributes
options:
  name:
    description: Name of the link.
    type: str
    default: kube-ipvs0
  addresses:
    description:
      - IPv4 and IPv6 host addresses, with or without a V(/32) or V(/128) suffix
        (V(10.96.0.1) and V(10.96.0.1/32) are the same address).
    type: list
    elements: str
    default: []
  exclusive:
    description:
      - Remove addresses on the link that O(addresses) does not list. With V(false) other
        addresses stay.
    type: bool
    default: false
  state:
    description:
      - V(present) creates the link if needed and adds the addresses; V(absent) deletes the link
        (with all its addresses) when it is a dummy link.
    type: str
    choices: [present, absent]
    default: present
seealso:
  - module: kubeipvs.node.ipvs_sync
notes:
  - O(state_src) may hold O(addresses).
"""

EXAMPLES = r"""
- name: kube-ipvs0 with two ClusterIPs
  kubeipvs.node.dummy_interface:
    name: kube-ipvs0
    addresses:
      - 10.96.0.1
      - 10.96.0.10/32
      - fd00:10:96::1

- name: Exactly these VIPs (others are removed)
  kubeipvs.node.dummy_interface:
    addresses: "{{ cluster_ips }}"
    exclusive: true

- name: Remove kube-ipvs0 after switching away from IPVS mode
  kubeipvs.node.dummy_interface:
    name: kube-ipvs0
    state: absent
"""

RETURN = r"""
link:
  description: The link after the run (or as it would be, in check mode); null when absent.
  returned: always
  type: dict
  sample: {name: kube-ipvs0, index: 5, kind: dummy, up: false, noarp: true}
addresses_added:
  description: Number of addresses added (or to be added, in check mode).
  returned: always
  type: int
  sample: 2
addresses_removed:
  description: Number of addresses removed (or to be removed, in check mode).
  returned: always
  type: int
  sample: 0
address_count:
  description: Number of addresses on the link after the run.
  returned: always
  type: int
  sample: 10000
"""

import contextlib

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError, run_module
from ansible_collections.kubeipvs.node.plugins.module_utils.node._links import IFF_BROADCAST, LinkKernel
from ansible_collections.kubeipvs.node.plugins.module_utils.node._state_files import state_module
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import HOST_PREFIX
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._links import (
    IFF_NOARP,
    Link,
    normalize_addresses,
    plan_addresses,
    validate_link_name,
)

DIFF_LINES = 20


def diff_text(addresses):
    shown = [f"{text}/{prefix}" for text, (_family, prefix) in sorted(addresses.items())[:DIFF_LINES]]
    if len(addresses) > DIFF_LINES:
        shown.append(f"... {len(addresses) - DIFF_LINES} more")
    return shown


def ensure_dummy_interface(module):
    params = module.params
    name = params["name"]
    validate_link_name(name)
    wanted = normalize_addresses(params["addresses"])
    with contextlib.closing(LinkKernel()) as links:
        return converge(module, links, name, wanted)


def converge(module, links, name, wanted):
    params = module.params
    link = links.get_link(name)
    if link is not None and link.kind != "dummy":
        raise KubeIpvsError(f"link {name} exists with type {link.kind or '?'!r}, not dummy: refusing to touch it",
                            link=link.as_dict())
    current = links.addresses(link) if link is not None else {}
    before = {"link": link.as_dict() if link else None, "addresses": diff_text(current)}
    result = {"changed": False, "addresses_added": 0, "addresses_removed": 0}

    if params["state"] == "absent":
        if link is not None:
            result.update(changed=True, addresses_removed=len(current))
            if not module.check_mode:
                links.delete_link(link)
        result.update(link=None, address_count=0)
        result["diff"] = {"before": before, "after": {"link": None, "addresses": []}}
        return result

    to_add, to_remove = plan_addresses(wanted, current, params["exclusive"])
    changed = link is None or bool(to_add) or bool(to_remove)
    if not module.check_mode:
        created = link is None
        if created:
            links.add_dummy(name)
            link = links.get_link(name)
        if to_add or to_remove:
            try:
                links.change_addresses(link, to_add, to_remove)
            except KubeIpvsError:
                if created:  # all or nothing: the link this call made goes again
                    links.delete_link(link)
                raise
    after_addresses = dict(current)
    for _family, text, _prefix in to_remove:
        after_addresses.pop(text, None)
    for family, text in to_add:
        after_addresses[text] = (family, HOST_PREFIX[family])
    shown_link = link or Link(name, 0, "dummy", IFF_BROADCAST | IFF_NOARP)
    result.update(changed=changed, addresses_added=len(to_add), addresses_removed=len(to_remove),
                  link=shown_link.as_dict(), address_count=len(after_addresses))
    after = {"link": shown_link.as_dict(), "addresses": diff_text(after_addresses)}
    result["diff"] = {"before": before, "after": after}
    return result


def main():
    module = state_module(
        AnsibleModule,
        state_options=("addresses",),
        argument_spec=dict(
            name=dict(type="str", default="kube-ipvs0"),
            addresses=dict(type="list", elements="str", default=[]),
            exclusive=dict(type="bool", default=False),
            state=dict(type="str", choices=["present", "absent"], default="present"),
        ),
        supports_check_mode=True,
    )
    run_module(module, ensure_dummy_interface)


if __name__ == "__main__":
    main()
