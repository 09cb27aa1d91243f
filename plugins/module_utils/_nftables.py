# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""nftables: list the tables (``nft -j list tables``) and delete one. Only whole tables: kube-proxy's
nftables mode keeps everything it makes in its own ``kube-proxy`` table per family."""

from __future__ import annotations

import json

from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError


def parse_tables(text):
    """[(family, name)] from ``nft -j list tables`` output."""
    try:
        document = json.loads(text or "{}")
    except ValueError as error:
        raise KubeIpvsError(f"nft -j list tables printed something that is not JSON: {error}") from None
    tables = []
    for item in document.get("nftables", []):
        table = item.get("table") if isinstance(item, dict) else None
        if table:
            tables.append((table["family"], table["name"]))
    return tables


class Nftables:
    """The node's nftables through the ``nft`` tool; ``run(argv)`` returns (rc, stdout, stderr)."""

    def __init__(self, run, nft_path):
        self.run = run
        self.nft = nft_path

    def list_tables(self):
        if not self.nft:
            return []  # no nft tool: nothing kube-proxy's nftables mode can have left either
        rc, out, err = self.run([self.nft, "-j", "list", "tables"])
        if rc != 0:
            raise KubeIpvsError(f"nft -j list tables failed: {err.strip()}", rc=rc)
        return parse_tables(out)

    def delete_table(self, family, name):
        rc, _out, err = self.run([self.nft, "delete", "table", family, name])
        if rc != 0 and "No such file or directory" not in err:
            raise KubeIpvsError(f"nft delete table {family} {name} failed: {err.strip()}", rc=rc)
