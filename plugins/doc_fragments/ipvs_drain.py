# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    # The graceful drain of ipvs_service and ipvs_sync (node/_ipvs_reconcile.py keeps the clocks).
    DOCUMENTATION = r"""
options:
  drain_timeout:
    description:
      - Seconds a removed real server with connections stays at weight 0 before it is deleted
        anyway. Not set - wait until its connections are gone.
    type: int
"""
