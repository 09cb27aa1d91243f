# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The catalogue's version facts: reading a kube-proxy version from an image or a server, and the
release the renderers reproduce for it."""

from __future__ import annotations

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_catalogue import (
    RENDERED_VERSIONS,
    check_version,
    image_tag,
    parse_version,
    rendered_version,
)


@pytest.mark.parametrize("text, expected", [
    ("v1.34.4", (1, 34, 4)), ("1.34", (1, 34, 0)), (" v1.37.2 ", (1, 37, 2)),
    ("v1.34.4-eks-1-34-20260101", (1, 34, 4)), ("v1.36.0+k3s1", (1, 36, 0)),
    ("", None), (None, None), ("latest", None), ("v1", None), ("1.34.4.5", None), ("v1.x", None),
])
def test_parse_version(text, expected):
    assert parse_version(text) == expected


@pytest.mark.parametrize("image, expected", [
    ("registry.k8s.io/kube-proxy:v1.34.4", (1, 34, 4)),
    ("registry.example:5000/kube-proxy:v1.35.4@sha256:" + "0" * 64, (1, 35, 4)),
    ("registry.example:5000/kube-proxy", None),  # the colon is the registry's port
    ("registry.k8s.io/kube-proxy@sha256:" + "0" * 64, None),
    ("registry.k8s.io/kube-proxy:latest", None),
    ("kube-proxy:v1.36.3-custom", (1, 36, 3)),
    ("", None), (None, None),
])
def test_image_version(image, expected):
    assert parse_version(image_tag(image)) == expected


def test_rendered_version_is_the_release_itself_or_the_nearest_proven_one():
    for release in RENDERED_VERSIONS:
        assert rendered_version((*release, 9)) == release
    assert rendered_version((1, 31, 2)) == RENDERED_VERSIONS[0]
    assert rendered_version((1, 40, 0)) == RENDERED_VERSIONS[-1]
    assert rendered_version((2, 0, 0)) == RENDERED_VERSIONS[-1]


def test_check_version():
    assert check_version([1, 35]) == (1, 35)
    for bad in ((1, 33), (1, 35, 1), "1.35", None, ("a", "b")):
        with pytest.raises(ValueError, match="not a kube-proxy release rendered here"):
            check_version(bad)
