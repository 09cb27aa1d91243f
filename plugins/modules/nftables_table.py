#!/usr/bin/python
# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: nftables_table
short_description: Make one nftables table hold exactly the given content
version_added: 0.1.0
author: kubeipvs.node maintainers (@kubeipvs)
description:
  - Declarative nftables table - after the run the table O(family) O(name) holds exactly
    O(content) (its sets, maps, chains and rules), or does not exist with O(state=absent).
  - Used to pre-program the C(kube-proxy) tables of kube-proxy's nftables mode before kube-proxy
    restarts in that mode (see C(kube_proxy_state)), but works for any table.
  - The content is first loaded into an empty, throw-away network namespace (C(unshare --net));
    that validates it (nft's error message comes back before anything on the node changed) and
    gives the form the kernel stores, which is compared with the live table. Handles, counters and
    the elements of sets the datapath fills (C(update @set)) are not compared.
  - A change replaces the whole table in one C(nft -f) transaction (C(add table), C(delete table),
    C(table ... { content })), which the kernel applies atomically - packets see the old table
    or the new one, never a mix. Elements the datapath added to dynamic sets are lost on a
    replacement. No other table is ever touched; content that would close the table early or
    create another table is refused. The content is read the way nft's scanner reads it (strings,
    comments to the next newline, no other control characters, no C(include)), and the scratch
    namespace holds canary tables that a batch reaching beyond its table would change.
  - Needs C(nft) and C(unshare) on the node and root privileges (a network namespace).
  - Use interface names (C(iifname)), not C(iif)/C(oif) indexes, in the content - the scratch
    namespace has no interfaces but C(lo).
extends_documentation_fragment:
  - kubeipvs.node.state_src
  - kubeipvs.node.attributes
options:
  family:
    description: The table's address family.
    type: str
    choices: [ip, ip6, inet, arp, bridge, netdev]
    default: ip
  name:
    description: The table's name.
    type: str
    required: true
  content:
    description:
      - The body of the table in nft syntax - what goes between C(table <family> <name> {) and C(}).
      - Required with O(state=present).
    type: str
  state:
    description: Whether the table exists (with exactly O(content)) or not.
    type: str
    choices: [present, absent]
    default: present
notes:
  - O(state_src) may hold O(content).
"""

EXAMPLES = r"""
- name: Pre-program kube-proxy's IPv4 nftables table
  kubeipvs.node.nftables_table:
    family: ip
    name: kube-proxy
    content: "{{ kube_proxy_nftables.ipv4.content }}"

- name: A small table of one's own
  kubeipvs.node.nftables_table:
    family: inet
    name: example
    content: |
      set blocked {
        type ipv4_addr
        elements = { 192.0.2.1 }
      }
      chain input {
        type filter hook input priority 0; policy accept;
        ip saddr @blocked drop
      }

- name: Remove a table
  kubeipvs.node.nftables_table:
    family: ip6
    name: kube-proxy
    state: absent
"""

RETURN = r"""
table:
  description: The table after the run (as it would be, in check mode).
  returned: always
  type: dict
  contains:
    family:
      description: The address family.
      type: str
      sample: ip
    name:
      description: The table name.
      type: str
      sample: kube-proxy
    present:
      description: Whether the table exists.
      type: bool
      sample: true
    chains:
      description: How many chains it holds.
      type: int
      sample: 24
  sample: {"family": "ip", "name": "kube-proxy", "present": true, "chains": 24}
diff:
  description: The table as C(nft list table) prints it, before and after.
  returned: always
  type: dict
  sample: {"before": "", "after": "table ip example {\n}\n"}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError, run_module
from ansible_collections.kubeipvs.node.plugins.module_utils.node._commands import Commands
from ansible_collections.kubeipvs.node.plugins.module_utils.node._nftables import TableEditor
from ansible_collections.kubeipvs.node.plugins.module_utils.node._state_files import state_module
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._nftables import (
    TABLE_FAMILIES,
    check_content,
    replace_batch,
    validate_table,
)


def plan_table(editor, family, name, state, content, check_mode):
    """Read the live table, work out the change, apply it unless ``check_mode``; the result dict."""
    live = editor.read_table(family, name)
    before_text = live.text if live is not None else ""
    if state == "absent":
        changed = live is not None
        if changed and not check_mode:
            editor.delete_table(family, name)
        after_text, chains, present = "", 0, False
    else:
        batch = replace_batch(family, name, content)
        desired = editor.scratch_load(batch, family, name)
        changed = live is None or live.canonical() != desired.canonical()
        if changed and not check_mode:
            editor.apply(batch)
            applied = editor.read_table(family, name)
            if applied is None or applied.canonical() != desired.canonical():
                raise KubeIpvsError(f"table {family} {name} does not hold the content after nft applied it - "
                                    "is another program writing it at the same time?")
        after_text, chains, present = desired.text, desired.chains(), True
    header = f"table {family} {name}"
    return {
        "changed": changed,
        "table": {"family": family, "name": name, "present": present, "chains": chains},
        "diff": {"before_header": header, "after_header": header, "before": before_text, "after": after_text},
    }


def nftables_table(module):
    params = module.params
    family, name, state, content = params["family"], params["name"], params["state"], params["content"]
    validate_table(family, name)
    if state == "present":
        if content is None:
            raise KubeIpvsError("content is required when state is present (give an empty string for an empty table)")
        check_content(content)
    return plan_table(TableEditor(Commands.of(module)), family, name, state, content, module.check_mode)


def build_module():
    return state_module(
        AnsibleModule,
        state_options=("content",),
        argument_spec={
            "family": {"type": "str", "choices": list(TABLE_FAMILIES), "default": "ip"},
            "name": {"type": "str", "required": True},
            "content": {"type": "str"},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
        },
        supports_check_mode=True,
    )


def main():
    run_module(build_module(), nftables_table)


if __name__ == "__main__":
    main()
