# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""state_src: a node module's large options from a (gzip-compressed) JSON file, through the module's
real AnsibleModule - the same checks as task arguments, the same conflicts, and a result that echoes
the path, not the state. The action plugin's shipping is proven by ansible-playbook runs in
tests/integration/test_kube_proxy_state.py."""

from __future__ import annotations

import gzip
import json

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.kubeipvs.node.plugins.module_utils.node._state_files import write_state_file
from ansible_collections.kubeipvs.node.plugins.modules import ipset, iptables_chain
from ansible_collections.kubeipvs.node.tests.unit.plugins.modules.helpers import NodeTools, build

SETS = [{"name": "KUBE-CLUSTER-IP", "type": "hash:ip,port", "members": ["10.96.0.1,tcp:443"]}]


def failure(capsys, module_file, **args):
    """The failure result of building ``module_file``'s AnsibleModule with ``args``."""
    with pytest.raises(SystemExit):
        build(module_file, NodeTools(), **args)
    return json.loads(capsys.readouterr().out)


def test_options_come_from_a_gzip_or_plain_file_with_the_spec_s_defaults(tmp_path):
    compressed = write_state_file(str(tmp_path / "state"), "ipset.json.gz", {"sets": SETS})
    assert gzip.decompress((tmp_path / "state" / "ipset.json.gz").read_bytes()).startswith(b'{"sets":')
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700  # made for the owner alone
    assert (tmp_path / "state" / "ipset.json.gz").stat().st_mode & 0o777 == 0o644  # the controller's user reads it
    assert [path.name for path in (tmp_path / "state").iterdir()] == ["ipset.json.gz"]  # no scratch file left
    plain = tmp_path / "ipset.json"
    plain.write_text(json.dumps({"sets": SETS}))
    for path in (compressed, str(plain)):
        module = build(ipset, NodeTools(), state_src=path, exclusive=True)
        (loaded,) = module.params["sets"]
        assert loaded["name"] == "KUBE-CLUSTER-IP" and loaded["members"] == ["10.96.0.1,tcp:443"]
        assert loaded["state"] is None and loaded["members_file"] is None  # sub-options filled as for task args
        assert module.params["exclusive"] is True


@pytest.mark.parametrize(("content", "message"), [
    (b"\x1f\x8b\x08 not gzip", "is not a valid gzip file"),
    (b"{not json", "is not JSON"),
    (b"[1, 2]", "must hold a JSON object of options, not list"),
    (b'{"sets": [], "name": "X"}', "holds option(s) name; it may hold only sets"),
    (b'{"sets": [{"type": "hash:ip"}]}', "missing required arguments: name"),
    (b'{"sets": [{"name": "A", "maxelem": NaN}]}', "NaN is not a number"),
    (b'{"sets": "KUBE-CLUSTER-IP"}', "sets"),
    (b"{}", "holds no option; it should hold sets"),
    (b'{"sets": [{"name": "A", "hashsize": 1e400}]}', "numbers must be finite"),
    (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
])
def test_a_bad_file_fails_before_anything_is_read_from_the_node(capsys, tmp_path, content, message):
    path = tmp_path / "state.json"
    path.write_bytes(content)
    result = failure(capsys, ipset, state_src=str(path))
    assert result["failed"] and message in result["msg"] and str(path) in result["msg"], result["msg"]


def test_a_missing_file_and_conflicting_options_fail(capsys, tmp_path):
    assert "cannot read state_src" in failure(capsys, ipset, state_src=str(tmp_path / "absent"))["msg"]
    path = write_state_file(str(tmp_path), "ipset.json.gz", {"sets": SETS})
    # the task gives the option the file holds, or one that excludes it
    assert "mutually exclusive: sets|state_src" in failure(capsys, ipset, state_src=path, sets=SETS)["msg"]
    assert "mutually exclusive: name|sets" in failure(capsys, ipset, state_src=path, name="KUBE-X")["msg"]
    chains = write_state_file(str(tmp_path), "chains.json.gz", {"chains": [{"chain": "KUBE-X", "table": "nat"}]})
    jumps = [{"chain": "PREROUTING"}]
    assert "mutually exclusive: jumps|chains" in failure(capsys, iptables_chain, state_src=chains, jumps=jumps)["msg"]
    # neither the option nor the file
    assert "one of the following is required: name, sets, state_src" in failure(capsys, ipset)["msg"]


def test_the_result_echoes_the_path_not_the_state(capsys, tmp_path):
    members = [f"10.96.{index // 250}.{index % 250 + 1},tcp:80" for index in range(2000)]
    path = write_state_file(str(tmp_path), "ipset.json.gz", {"sets": [dict(SETS[0], members=members)]})
    with patch_module_args({"state_src": path, "exclusive": True, "_ansible_check_mode": True}):
        module = ipset.build_module()
        assert module.params["sets"][0]["members"] == members
        with pytest.raises(SystemExit):
            module.exit_json(changed=False)
    echoed = json.loads(capsys.readouterr().out)["invocation"]["module_args"]
    assert echoed["state_src"] == path and echoed["sets"] is None and echoed["exclusive"] is True
