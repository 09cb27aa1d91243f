# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Run the server: python -m tests.apiserver --port 8080 --nodes node1,node2 (from the repository root)."""

from __future__ import annotations

from .server import main

main()
