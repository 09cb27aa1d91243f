# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""KubeProxyConfiguration as data: parse, merge the requested fields, validate, render.

Pure functions (no Ansible, no API). The config lives as YAML text in the kube-proxy ConfigMap
(kubeadm: kube-system/kube-proxy, key config.conf). Merging keeps every key and value it is not
asked to change; comments are lost when the text is rewritten.
"""

from __future__ import annotations

import copy
import ipaddress
import re
import traceback

try:
    import yaml
except ImportError:  # PyYAML comes with Ansible on the controller; the modules check HAS_YAML
    HAS_YAML = False
    YAML_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_YAML = True
    YAML_IMPORT_ERROR = None
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError

API_VERSION = "kubeproxy.config.k8s.io/v1alpha1"
KIND = "KubeProxyConfiguration"
# '' means the platform default (iptables on Linux until nftables takes over).
LINUX_MODES = ("", "iptables", "ipvs", "nftables")
WINDOWS_MODES = ("kernelspace",)
# The IPVS schedulers kube-proxy accepts (pkg/proxy/apis/config/validation).
IPVS_SCHEDULERS = ("", "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq", "mh")

# Module option -> path in the KubeProxyConfiguration.
OPTION_PATHS = {
    "mode": ("mode",),
    "ipvs_scheduler": ("ipvs", "scheduler"),
    "ipvs_strict_arp": ("ipvs", "strictARP"),
    "ipvs_exclude_cidrs": ("ipvs", "excludeCIDRs"),
    "ipvs_sync_period": ("ipvs", "syncPeriod"),
    "ipvs_min_sync_period": ("ipvs", "minSyncPeriod"),
    "ipvs_tcp_timeout": ("ipvs", "tcpTimeout"),
    "ipvs_tcp_fin_timeout": ("ipvs", "tcpFinTimeout"),
    "ipvs_udp_timeout": ("ipvs", "udpTimeout"),
    "conntrack_max_per_core": ("conntrack", "maxPerCore"),
    "conntrack_min": ("conntrack", "min"),
    "conntrack_tcp_established_timeout": ("conntrack", "tcpEstablishedTimeout"),
    "conntrack_tcp_close_wait_timeout": ("conntrack", "tcpCloseWaitTimeout"),
}
DURATION_FIELDS = {
    ("ipvs", "syncPeriod"), ("ipvs", "minSyncPeriod"), ("ipvs", "tcpTimeout"), ("ipvs", "tcpFinTimeout"),
    ("ipvs", "udpTimeout"), ("conntrack", "tcpEstablishedTimeout"), ("conntrack", "tcpCloseWaitTimeout"),
    ("conntrack", "udpTimeout"), ("conntrack", "udpStreamTimeout"), ("iptables", "syncPeriod"),
    ("iptables", "minSyncPeriod"), ("nftables", "syncPeriod"), ("nftables", "minSyncPeriod"),
    ("configSyncPeriod",), ("syncPeriod",), ("minSyncPeriod",),
}
COUNT_FIELDS = {("conntrack", "maxPerCore"), ("conntrack", "min")}

DURATION_UNITS = {"ns": 1, "us": 1000, "µs": 1000, "μs": 1000, "ms": 10 ** 6, "s": 10 ** 9, "m": 60 * 10 ** 9,
                  "h": 3600 * 10 ** 9}
DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text):
    """Nanoseconds of a Go duration string ('30s', '1m30s', '0'); None when it is not one."""
    if not isinstance(text, str):
        return None
    body = text[1:] if text[:1] in "+-" else text
    if body == "0":
        return 0
    total, position = 0, 0
    for match in DURATION_RE.finditer(body):
        if match.start() != position:
            return None
        total += float(match.group(1)) * DURATION_UNITS[match.group(2)]
        position = match.end()
    if position != len(body) or not body:
        return None
    return int(-total if text.startswith("-") else total)


def parse_config(text, where):
    """The KubeProxyConfiguration mapping in ``text``; ``where`` names the ConfigMap and key in errors."""
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise KubeIpvsError(f"{where} is not valid YAML: {error}") from None
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise KubeIpvsError(f"{where} is not a YAML mapping (found {type(config).__name__})")
    if config.get("kind", KIND) != KIND:
        raise KubeIpvsError(f"{where} holds a {config.get('kind')!r}, not a {KIND}")
    return config


def render_config(config):
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False, allow_unicode=True)


def patch_from_options(options, merge=None):
    """Nested dict of the fields to set: ``merge`` first, then the named options (None = not given).

    A named option and ``merge`` that set the same field to different values is an error.
    """
    patch = copy.deepcopy(merge or {})
    if not isinstance(patch, dict):
        raise KubeIpvsError("merge must be a mapping of KubeProxyConfiguration fields")
    for option, path in OPTION_PATHS.items():
        value = options.get(option)
        if value is None:
            continue
        node = patch
        for key in path[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise KubeIpvsError(f"merge sets {key!r} to a non-mapping, but option {option} needs {'.'.join(path)}")
            node = child
        if path[-1] in node and node[path[-1]] != value:
            raise KubeIpvsError(f"option {option} ({value!r}) and merge.{'.'.join(path)} "
                                f"({node[path[-1]]!r}) disagree; set it in one place")
        node[path[-1]] = value
    return patch


def merge_config(current, patch, path=()):
    """``current`` with ``patch`` merged in: mappings recursively, anything else replaced.

    A duration that is already equal in value ('15m' vs '15m0s') keeps its current spelling, so
    a run with the same settings changes nothing.
    """
    result = copy.deepcopy(current)
    for key, value in patch.items():
        here = (*path, key)
        old = result.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            result[key] = merge_config(old, value, here)
        elif here in DURATION_FIELDS and parse_duration(old) is not None and \
                parse_duration(old) == parse_duration(value):
            continue
        else:
            result[key] = copy.deepcopy(value)
    return result


def field(config, path):
    for key in path:
        if not isinstance(config, dict):
            return None
        config = config.get(key)
    return config


def validate_config(config):
    """Raise KubeIpvsError listing every field kube-proxy would reject (only fields that are set)."""
    problems = []
    mode = config.get("mode")
    if mode is not None:
        if mode in WINDOWS_MODES:
            problems.append(f"mode {mode!r} exists only on Windows; on Linux use one of {list(LINUX_MODES)}")
        elif mode not in LINUX_MODES:
            problems.append(f"mode {mode!r} is not a kube-proxy mode; use one of {list(LINUX_MODES)} "
                            "('' is the platform default)")
    scheduler = field(config, ("ipvs", "scheduler"))
    if scheduler is not None and scheduler not in IPVS_SCHEDULERS:
        problems.append(f"ipvs.scheduler {scheduler!r} is not an IPVS scheduler kube-proxy knows; use one of "
                        f"{[s for s in IPVS_SCHEDULERS if s]}")
    strict_arp = field(config, ("ipvs", "strictARP"))
    if strict_arp is not None and not isinstance(strict_arp, bool):
        problems.append(f"ipvs.strictARP must be true or false, not {strict_arp!r}")
    cidrs = field(config, ("ipvs", "excludeCIDRs"))
    if cidrs is not None:
        if not isinstance(cidrs, list):
            problems.append("ipvs.excludeCIDRs must be a list of CIDRs")
        else:
            for cidr in cidrs:
                try:
                    ipaddress.ip_network(str(cidr), strict=False)
                except ValueError:
                    problems.append(f"ipvs.excludeCIDRs: {cidr!r} is not a CIDR")
    for path in sorted(DURATION_FIELDS):
        value = field(config, path)
        if value is None:
            continue
        nanoseconds = parse_duration(value)
        if nanoseconds is None:
            problems.append(f"{'.'.join(path)}: {value!r} is not a duration (for example '30s', '1m30s', '1h')")
        elif nanoseconds < 0:
            problems.append(f"{'.'.join(path)}: {value!r} must not be negative")
    for path in sorted(COUNT_FIELDS):
        value = field(config, path)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            problems.append(f"{'.'.join(path)}: {value!r} must be a whole number >= 0")
    if problems:
        raise KubeIpvsError("invalid KubeProxyConfiguration: " + "; ".join(problems), problems=problems)


def default_config(cluster_cidr=None):
    """A complete KubeProxyConfiguration with kubeadm's defaults, for a fresh deployment."""
    config = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "bindAddress": "0.0.0.0",
        "clientConnection": {"acceptContentTypes": "", "burst": 0, "contentType": "", "qps": 0,
                             "kubeconfig": "/var/lib/kube-proxy/kubeconfig.conf"},
        "clusterCIDR": cluster_cidr or "",
        "configSyncPeriod": "0s",
        "conntrack": {"maxPerCore": None, "min": None, "tcpCloseWaitTimeout": None,
                      "tcpEstablishedTimeout": None, "udpStreamTimeout": "0s", "udpTimeout": "0s"},
        "enableProfiling": False,
        "healthzBindAddress": "",
        "hostnameOverride": "",
        "iptables": {"localhostNodePorts": None, "masqueradeAll": False, "masqueradeBit": None,
                     "minSyncPeriod": "0s", "syncPeriod": "0s"},
        "ipvs": {"excludeCIDRs": None, "minSyncPeriod": "0s", "scheduler": "", "strictARP": False,
                 "syncPeriod": "0s", "tcpFinTimeout": "0s", "tcpTimeout": "0s", "udpTimeout": "0s"},
        "metricsBindAddress": "",
        "mode": "",
        "nodePortAddresses": None,
        "oomScoreAdj": None,
        "portRange": "",
        "showHiddenMetricsForVersion": "",
    }
    return config
