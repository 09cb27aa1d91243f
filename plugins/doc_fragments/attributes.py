# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    # Every module: full check and diff mode, Linux. The variants below only say what differs;
    # list them before this one (the first fragment to set a key wins).
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description: Can run in check mode and return the changes it would make without making them.
    support: full
  diff_mode:
    description: Returns details on what has changed (or would change in check mode) in diff mode.
    support: full
  platform:
    description: Target operating systems this module runs on.
    support: full
    platforms: linux
"""

    # Modules that talk to the Kubernetes API only (kubeipvs.node.attributes.api).
    API = r"""
options: {}
attributes:
  check_mode:
    details:
      - Nothing changes in the cluster - writes go to the API server as server-side dry runs (validated, not
        stored), or are not sent.
  platform:
    description: Where this module runs.
    platforms: posix
    details:
      - "It talks to the Kubernetes API only and touches no host: run it on the controller
        (C(delegate_to: localhost)), where the C(kubernetes) Python library is installed."
"""

    # Modules that only read (kubeipvs.node.attributes.read_only).
    READ_ONLY = r"""
options: {}
attributes:
  check_mode:
    details: Read-only, the same in check mode.
  diff_mode:
    support: none
"""
