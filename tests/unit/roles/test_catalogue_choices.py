# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Role argument specs must list kube-proxy's choices as the catalogue has them (YAML cannot import
it, so a drift is caught here): modes and IPVS schedulers; and the ipvs_node role's tunable
defaults that are kube-proxy's own values must be the catalogue's, in its defaults and its specs."""

from __future__ import annotations

import pathlib

import pytest
import yaml
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_catalogue import (
    DEFAULT_DUMMY_INTERFACE,
    IPSET_HASHSIZE,
    IPSET_MAXELEM,
    IPSET_PORT_RANGE,
    IPVS_SCHEDULERS,
    PROXY_MODES,
)

ROLES = pathlib.Path(__file__).resolve().parents[3] / "roles"


def option(role, name):
    specs = yaml.safe_load((ROLES / role / "meta" / "argument_specs.yml").read_text())
    found = [entry["options"][name] for entry in specs["argument_specs"].values() if name in entry.get("options", {})]
    assert found, f"{role} has no option {name}"
    return found


@pytest.mark.parametrize(("role", "name"), [("kube_proxy", "kube_proxy_ipvs_scheduler"),
                                            ("mode_switch", "mode_switch_ipvs_scheduler"),
                                            ("ipvs_node", "ipvs_node_scheduler")])
def test_scheduler_choices_are_kube_proxy_s(role, name):
    for spec in option(role, name):
        assert sorted(spec["choices"]) == sorted(IPVS_SCHEDULERS)


def test_kube_proxy_role_modes_are_the_catalogue_s_and_the_default():
    (spec,) = option("kube_proxy", "kube_proxy_mode")
    assert sorted(spec["choices"]) == sorted(("", *PROXY_MODES))


def role_defaults(role):
    folder = ROLES / role / "defaults"
    files = sorted((folder / "main").glob("*.yml")) if (folder / "main").is_dir() else [folder / "main.yml"]
    merged = {}
    for path in files:
        merged.update(yaml.safe_load(path.read_text()) or {})
    return merged


@pytest.mark.parametrize(("name", "value"), [("ipvs_node_ipset_hashsize", IPSET_HASHSIZE),
                                             ("ipvs_node_ipset_maxelem", IPSET_MAXELEM),
                                             ("ipvs_node_ipset_port_range", IPSET_PORT_RANGE),
                                             ("ipvs_node_dummy_interface", DEFAULT_DUMMY_INTERFACE)])
def test_ipvs_node_defaults_that_are_kube_proxy_s_are_the_catalogue_s(name, value):
    assert role_defaults("ipvs_node")[name] == value
    for spec in option("ipvs_node", name):
        assert spec["default"] == value
