# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    # Node modules whose large options can come from a file the controller ships (kubeipvs.node.state_src).
    DOCUMENTATION = r"""
options:
  state_src:
    description:
      - A file on the controller holding some of this task's options as one JSON object, gzip-compressed
        or not - what M(kubeipvs.node.kube_proxy_state) writes with O(kubeipvs.node.kube_proxy_state#module:dest).
        The notes below say which options it may hold.
      - The module's action plugin copies the file, still compressed, into the task's temporary directory on
        the node, which goes when the task ends (in check mode too). Its options get the same checks as the
        task's own, and are not echoed back in the result - for a large desired state neither the task's
        arguments nor its result carry it.
      - A relative path is looked up as O(ansible.builtin.copy#module:src) is (a role's C(files/) first).
    type: path
attributes:
  action:
    description: Indicates this has a corresponding action plugin so some parts of the options can be executed on the controller.
    support: full
    details: The action plugin ships O(state_src) to the node.
"""
