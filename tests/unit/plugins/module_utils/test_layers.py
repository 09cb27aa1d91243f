# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The layers of plugins/module_utils, read from the code itself.

- ``pure/`` decides: it validates, parses, plans and renders, and touches nothing - no file, no
  command, no socket, no Ansible. It imports only the standard library's data modules, other
  ``pure/`` files and ``_errors``.
- ``node/`` touches the node (tools, /proc and /sys, netlink, files); ``k8s/`` talks to the
  Kubernetes API. Neither imports the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

MODULE_UTILS = Path(__file__).resolve().parents[4] / "plugins" / "module_utils"
PACKAGE = "ansible_collections.kubeipvs.node.plugins.module_utils"
# Standard library modules pure code may use (data in, data out); yaml is the optional parser.
PURE_LIBRARIES = {"__future__", "base64", "copy", "hashlib", "heapq", "ipaddress", "json", "re", "shlex", "socket",
                  "struct", "traceback", "yaml", "os"}
# The only attributes of these modules pure code may touch: string and address conversions.
PURE_ATTRIBUTES = {
    "os": {"path"},
    "os.path": {"basename", "dirname", "join", "splitext"},
    "socket": {"AF_INET", "AF_INET6", "inet_aton", "inet_ntoa", "inet_ntop", "inet_pton", "htons"},
}
IO_BUILTINS = {"open", "exec", "eval", "__import__", "input"}


def files_of(layer):
    return sorted(path for path in (MODULE_UTILS / layer).glob("*.py") if path.name != "__init__.py")


def imports_of(tree):
    """(module, line) of every import, with ``from X import Y`` giving X.Y for this collection's packages."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == PACKAGE or node.module.endswith((".pure", ".node", ".k8s")):
                found += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
            else:
                found.append((node.module, node.lineno))
    return found


def dotted(node):
    """``os.path.exists`` for an attribute chain on a plain name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def test_every_module_utils_file_is_in_a_layer():
    loose = sorted(path.name for path in MODULE_UTILS.glob("*.py") if path.name not in ("__init__.py", "_errors.py"))
    assert loose == []
    assert files_of("pure") and files_of("node") and files_of("k8s")


@pytest.mark.parametrize("path", files_of("pure"), ids=lambda path: path.name)
def test_pure_code_imports_no_io(path):
    tree = ast.parse(path.read_text())
    for module, line in imports_of(tree):
        if module.startswith(PACKAGE):
            assert module.startswith((f"{PACKAGE}.pure.", f"{PACKAGE}._errors")), f"{path.name}:{line} imports {module}"
        else:
            assert module.split(".")[0] in PURE_LIBRARIES, f"{path.name}:{line} imports {module}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in IO_BUILTINS, f"{path.name}:{node.lineno} calls {node.func.id}()"
        if isinstance(node, ast.Attribute):
            name = dotted(node)
            owner, _dot, attribute = (name or "").rpartition(".")
            if owner in PURE_ATTRIBUTES:
                assert attribute in PURE_ATTRIBUTES[owner], f"{path.name}:{node.lineno} uses {name}"


@pytest.mark.parametrize(("layer", "other"), [("node", "k8s"), ("k8s", "node")])
def test_node_and_kubernetes_code_do_not_import_each_other(layer, other):
    for path in files_of(layer):
        for module, line in imports_of(ast.parse(path.read_text())):
            assert not module.startswith(f"{PACKAGE}.{other}."), f"{layer}/{path.name}:{line} imports {module}"


FILTERS = MODULE_UTILS.parent / "filter"


@pytest.mark.parametrize("path", sorted(FILTERS.glob("*.py")), ids=lambda path: path.name)
def test_filters_only_hand_pure_results_to_the_roles(path):
    """A filter runs on the controller inside a template: it may use ``pure/`` and Ansible's errors,
    never the node or the cluster."""
    for module, line in imports_of(ast.parse(path.read_text())):
        if module.startswith(PACKAGE):
            assert module.startswith(f"{PACKAGE}.pure."), f"{path.name}:{line} imports {module}"
        else:
            assert module in ("__future__", "ansible.errors"), f"{path.name}:{line} imports {module}"
