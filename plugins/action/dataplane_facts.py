# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Action plugin of kubeipvs.node.dataplane_facts: ships its O(state_src) file to the node."""

from __future__ import annotations

from ansible_collections.kubeipvs.node.plugins.plugin_utils._state_src_action import StateSrcAction


class ActionModule(StateSrcAction):
    """kubeipvs.node.dataplane_facts with its state_src file shipped to the node's temporary directory."""
