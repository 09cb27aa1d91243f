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
from ansible_collections.kubeipvs.node.plugins.module_utils.pure import _kube_proxy_catalogue as catalogue
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._text import control_character, ip_network

API_VERSION = "kubeproxy.config.k8s.io/v1alpha1"
KIND = "KubeProxyConfiguration"
# '' means the platform default (iptables on Linux until nftables takes over).
LINUX_MODES = ("", *catalogue.PROXY_MODES)
WINDOWS_MODES = ("kernelspace",)
# The IPVS schedulers kube-proxy accepts; '' means its default.
IPVS_SCHEDULERS = ("", *catalogue.IPVS_SCHEDULERS)

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
    "cluster_cidr": ("clusterCIDR",),
}
# Their Ansible types, shared by kube_proxy_config and kube_proxy (doc fragment kube_proxy_settings).
_NON_STRING_OPTIONS = {
    "ipvs_strict_arp": {"type": "bool"},
    "ipvs_exclude_cidrs": {"type": "list", "elements": "str"},
    "conntrack_max_per_core": {"type": "int"},
    "conntrack_min": {"type": "int"},
}


def settings_arg_spec():
    """A fresh argument spec of the named KubeProxyConfiguration options (OPTION_PATHS)."""
    return {option: dict(_NON_STRING_OPTIONS.get(option, {"type": "str"})) for option in OPTION_PATHS}


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
        # in whole numbers: a float turns a long number ('1' * 400 + 's') into an infinity int() cannot
        # take; beyond 30 digits a duration is far too long, and digits past the 30th of a fraction are
        # far below a nanosecond
        whole, _dot, fraction = match.group(1).partition(".")
        whole, fraction = whole.lstrip("0") or "0", fraction[:30] or "0"
        if len(whole) > 30:
            whole = "1" + "0" * 30
        scale = 10 ** len(fraction)
        total += (int(whole) * scale + int(fraction)) * DURATION_UNITS[match.group(2)] // scale
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
    except RecursionError:
        raise KubeIpvsError(f"{where} is nested too deeply to be a {KIND}") from None
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise KubeIpvsError(f"{where} is not a YAML mapping (found {type(config).__name__})")
    if config.get("kind", KIND) != KIND:
        raise KubeIpvsError(f"{where} holds a {config.get('kind')!r}, not a {KIND}")
    return config


def render_config(config):
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False, allow_unicode=True)


def patch_from_options(options, merge=None, merge_name="merge"):
    """Nested dict of the fields to set: ``merge`` first, then the named options (None = not given).

    A named option and ``merge`` (the option called ``merge_name``) that set the same field to
    different values is an error.
    """
    patch = copy.deepcopy(merge or {})
    if not isinstance(patch, dict):
        raise KubeIpvsError(f"{merge_name} must be a mapping of KubeProxyConfiguration fields")
    for option, path in OPTION_PATHS.items():
        value = options.get(option)
        if value is None:
            continue
        node = patch
        for key in path[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise KubeIpvsError(f"{merge_name} sets {key!r} to a non-mapping, but option {option} needs "
                                    f"{'.'.join(path)}")
            node = child
        if path[-1] in node and node[path[-1]] != value:
            raise KubeIpvsError(f"option {option} ({value!r}) and {merge_name}.{'.'.join(path)} "
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


# What kube-proxy runs with when a field is unset (its v1alpha1 defaults on Linux), for the fields
# the collection renders a node from.
DEFAULT_MODE = "iptables"
DEFAULT_SCHEDULER = "rr"
DEFAULT_MASQUERADE_BIT = 14


def settings_of(config):
    """The settings kube-proxy runs with, from its KubeProxyConfiguration, under the names of the
    collection's options: an unset (or empty) field takes kube-proxy's default. ``masquerade_bit``
    and ``masquerade_all`` are per mode (nftables mode reads the ``nftables`` section, the others
    the ``iptables`` one); a set masqueradeBit of 0 stays 0 (only null is unset). Fields of the
    wrong type count as unset: validation reports them."""
    config = config if isinstance(config, dict) else {}

    def text(path):
        value = field(config, path)
        return value if isinstance(value, str) else ""

    def strings(path):
        value = field(config, path)
        return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []

    def bit(section):
        value = field(config, (section, "masqueradeBit"))
        return value if isinstance(value, int) and not isinstance(value, bool) else DEFAULT_MASQUERADE_BIT

    # nftables mode reads its own section; iptables and IPVS mode read the iptables one.
    section = {"iptables": "iptables", "ipvs": "iptables", "nftables": "nftables"}
    return {
        "mode": text(OPTION_PATHS["mode"]) or DEFAULT_MODE,
        "ipvs_scheduler": text(OPTION_PATHS["ipvs_scheduler"]) or DEFAULT_SCHEDULER,
        "ipvs_exclude_cidrs": strings(OPTION_PATHS["ipvs_exclude_cidrs"]),
        "cluster_cidr": text(("clusterCIDR",)),
        "masquerade_bit": {mode: bit(name) for mode, name in section.items()},
        "masquerade_all": {mode: field(config, (name, "masqueradeAll")) is True for mode, name in section.items()},
        "node_port_addresses": strings(("nodePortAddresses",)),
        "localhost_node_ports": field(config, ("iptables", "localhostNodePorts")) is not False,
        "feature_gates": gates(field(config, ("featureGates",))),
    }


def gates(value):
    """The featureGates set to true or false (a gate of another type counts as unset)."""
    if not isinstance(value, dict):
        return {}
    return {name: flag for name, flag in value.items() if isinstance(name, str) and isinstance(flag, bool)}


def field(config, path):
    for key in path:
        if not isinstance(config, dict):
            return None
        config = config.get(key)
    return config


# --- the KubeProxyConfiguration schema ----------------------------------------------------------
# The fields and Go types of kube-proxy's published config types (k8s.io/kube-proxy/config/v1alpha1,
# with component-base's ClientConnectionConfiguration and LoggingConfiguration): what kube-proxy's
# decoder accepts. A null is accepted everywhere (Go leaves the field at its zero value); the value
# checks kube-proxy's own validation makes follow the types.
STRING, BOOL, DURATION, FLOAT, QUANTITY, STRINGS = "string", "bool", "duration", "float", "quantity", "strings"
DURATION_OR_NANOSECONDS = "duration or nanoseconds"
INT32 = ("int", -(2 ** 31), 2 ** 31 - 1)
UINT32 = ("int", 0, 2 ** 32 - 1)
COUNT = ("int", 0, 2 ** 31 - 1)
MASQUERADE_BIT = ("int", 0, 31)
OUTPUT_ROUTING = {"splitStream": BOOL, "infoBufferSize": QUANTITY}
V1ALPHA1 = {
    "apiVersion": STRING,
    "kind": STRING,
    "featureGates": ("map", BOOL),
    "clientConnection": {"kubeconfig": STRING, "acceptContentTypes": STRING, "contentType": STRING, "qps": FLOAT,
                         "burst": INT32},
    "logging": {"format": STRING, "flushFrequency": DURATION_OR_NANOSECONDS, "verbosity": UINT32,
                "vmodule": ("list", {"filePattern": STRING, "verbosity": UINT32}),
                "options": {"text": OUTPUT_ROUTING, "json": OUTPUT_ROUTING}},
    "hostnameOverride": STRING,
    "bindAddress": STRING,
    "healthzBindAddress": STRING,
    "metricsBindAddress": STRING,
    "bindAddressHardFail": BOOL,
    "enableProfiling": BOOL,
    "showHiddenMetricsForVersion": STRING,
    "mode": STRING,
    "iptables": {"masqueradeBit": MASQUERADE_BIT, "masqueradeAll": BOOL, "localhostNodePorts": BOOL,
                 "syncPeriod": DURATION, "minSyncPeriod": DURATION},
    "ipvs": {"syncPeriod": DURATION, "minSyncPeriod": DURATION, "scheduler": STRING, "excludeCIDRs": STRINGS,
             "strictARP": BOOL, "tcpTimeout": DURATION, "tcpFinTimeout": DURATION, "udpTimeout": DURATION},
    "nftables": {"masqueradeBit": MASQUERADE_BIT, "masqueradeAll": BOOL, "syncPeriod": DURATION,
                 "minSyncPeriod": DURATION},
    "winkernel": {"networkName": STRING, "sourceVip": STRING, "enableDSR": BOOL, "rootHnsEndpointName": STRING,
                  "forwardHealthCheckVip": BOOL},
    "detectLocalMode": STRING,
    "detectLocal": {"bridgeInterface": STRING, "interfaceNamePrefix": STRING},
    "clusterCIDR": STRING,
    "nodePortAddresses": STRINGS,
    "oomScoreAdj": ("int", -1000, 1000),
    "conntrack": {"maxPerCore": COUNT, "min": COUNT, "tcpEstablishedTimeout": DURATION,
                  "tcpCloseWaitTimeout": DURATION, "tcpBeLiberal": BOOL, "udpTimeout": DURATION,
                  "udpStreamTimeout": DURATION},
    "configSyncPeriod": DURATION,
    "portRange": STRING,
    "windowsRunAsService": BOOL,
}
SCHEMAS = {API_VERSION: V1ALPHA1}
# A Kubernetes quantity ("64Ki", "1.5M", "0").
QUANTITY_RE = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?")
INT64_MAX = 2 ** 63 - 1


def _check_value(value, spec, path, problems, unknown):
    """Append to ``problems`` what is wrong with ``value`` against ``spec`` at ``path``; the paths of
    keys the schema does not name go to ``unknown`` as (path, at the top level)."""
    if value is None:
        return
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            problems.append(f"{path} must be a mapping of its fields, not {_shown(value)}")
            return
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if not isinstance(key, str) or key not in spec:
                unknown.append((where, not path))
            else:
                _check_value(item, spec[key], where, problems, unknown)
    elif isinstance(spec, tuple) and spec[0] == "map":
        if not isinstance(value, dict):
            problems.append(f"{path} must be a mapping, not {_shown(value)}")
            return
        for key, item in value.items():
            if not isinstance(key, str) or control_character(key) is not None:
                problems.append(f"{path}: key {_shown(key)} must be a name without control characters")
            else:
                _check_value(item, spec[1], f"{path}.{key}", problems, unknown)
    elif isinstance(spec, tuple) and spec[0] == "list":
        if not isinstance(value, list):
            problems.append(f"{path} must be a list, not {_shown(value)}")
            return
        for index, item in enumerate(value):
            _check_value(item, spec[1], f"{path}[{index}]", problems, unknown)
    elif isinstance(spec, tuple):  # ("int", low, high)
        _low, low, high = spec
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            limits = f">= {low}" if high == 2 ** 31 - 1 and low == 0 else f"{low} to {high}"
            problems.append(f"{path}: {_shown(value)} must be a whole number {limits}")
    elif spec == STRING:
        if not isinstance(value, str):
            problems.append(f"{path} must be a string, not {_shown(value)}")
        elif control_character(value) is not None:
            problems.append(f"{path}: {_shown(value)} holds a control character")
    elif spec == STRINGS:
        if not isinstance(value, list):
            problems.append(f"{path} must be a list of strings, not {_shown(value)}")
            return
        for index, item in enumerate(value):
            _check_value(item, STRING, f"{path}[{index}]", problems, unknown)
    elif spec == BOOL:
        if not isinstance(value, bool):
            problems.append(f"{path} must be true or false, not {_shown(value)}")
    elif spec == FLOAT:
        # a float that is not finite (YAML's .inf, .nan) is no number JSON can carry: x - x is NaN for those
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value - value != 0:
            problems.append(f"{path} must be a number, not {_shown(value)}")
    elif spec == QUANTITY:
        if isinstance(value, bool) or not (isinstance(value, int) or
                                           (isinstance(value, str) and QUANTITY_RE.fullmatch(value))):
            problems.append(f"{path}: {_shown(value)} is not a quantity (for example 64Ki or 0)")
    elif spec in (DURATION, DURATION_OR_NANOSECONDS):
        if spec == DURATION_OR_NANOSECONDS and isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > INT64_MAX:
                problems.append(f"{path}: {value} nanoseconds do not fit a duration")
            return
        nanoseconds = parse_duration(value)
        if nanoseconds is None:
            problems.append(f"{path}: {_shown(value)} is not a duration (for example '30s', '1m30s', '1h')")
        elif abs(nanoseconds) > INT64_MAX:
            problems.append(f"{path}: {_shown(value)} is longer than a duration can be")
        elif nanoseconds < 0:
            problems.append(f"{path}: {_shown(value)} must not be negative")


def _shown(value):
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."


def schema_problems(config, patch=None):
    """What is wrong with ``config`` against the schema of its apiVersion (v1alpha1 when it names none):
    values of the wrong type or out of range, unknown top-level fields, and unknown fields deeper down
    that ``patch`` (the fields this call sets) brings in - a field kube-proxy does not know is never
    written; one already stored is left as it is."""
    schema, problems = schema_of(config)
    if schema is None:
        return problems
    unknown, requested = [], []
    _check_value(config, schema, "", problems, unknown)
    _check_value(patch if isinstance(patch, dict) else {}, schema, "", [], requested)
    requested = {where for where, _top in requested}
    problems += [f"{where} is not a field of {KIND} {config.get('apiVersion', API_VERSION)}"
                 for where, top in unknown if top or where in requested]
    return problems


def schema_of(config):
    """(the schema of ``config``'s apiVersion, []) or (None, [the problem])."""
    if not isinstance(config, dict):
        return None, [f"a KubeProxyConfiguration is a mapping, not {_shown(config)}"]
    api_version = config.get("apiVersion", API_VERSION)
    if not isinstance(api_version, str) or api_version not in SCHEMAS:
        return None, [f"apiVersion {_shown(api_version)} is not one whose schema this collection knows "
                      f"({', '.join(SCHEMAS)})"]
    if config.get("kind", KIND) != KIND:
        return None, [f"kind {_shown(config.get('kind'))} is not {KIND}"]
    return SCHEMAS[api_version], []


def validate_config(config, patch=None):
    """Raise KubeIpvsError listing every problem: the schema of the config's apiVersion (types, ranges,
    unknown fields; see schema_problems), then the values kube-proxy would reject."""
    problems = schema_problems(config, patch)
    if schema_of(config)[0] is None:
        raise KubeIpvsError("invalid KubeProxyConfiguration: " + "; ".join(problems), problems=problems)
    mode = config.get("mode")
    if isinstance(mode, str):
        if mode in WINDOWS_MODES:
            problems.append(f"mode {mode!r} exists only on Windows; on Linux use one of {list(LINUX_MODES)}")
        elif mode not in LINUX_MODES:
            problems.append(f"mode {mode!r} is not a kube-proxy mode; use one of {list(LINUX_MODES)} "
                            "('' is the platform default)")
    scheduler = field(config, ("ipvs", "scheduler"))
    if isinstance(scheduler, str) and scheduler not in IPVS_SCHEDULERS:
        problems.append(f"ipvs.scheduler {scheduler!r} is not an IPVS scheduler kube-proxy knows; use one of "
                        f"{[s for s in IPVS_SCHEDULERS if s]}")
    cidrs = field(config, ("ipvs", "excludeCIDRs"))
    if isinstance(cidrs, list):
        for cidr in cidrs:
            if not isinstance(cidr, str):
                continue  # the schema named it
            try:
                ip_network(cidr, "ipvs.excludeCIDRs")
            except KubeIpvsError:
                problems.append(f"ipvs.excludeCIDRs: {cidr!r} is not a CIDR")
    cluster_cidr = config.get("clusterCIDR")
    if isinstance(cluster_cidr, str) and cluster_cidr:
        problems.extend(_cluster_cidr_problems(cluster_cidr))
    if problems:
        raise KubeIpvsError("invalid KubeProxyConfiguration: " + "; ".join(problems), problems=problems)


def _cluster_cidr_problems(text):
    """What kube-proxy's validation refuses in clusterCIDR: one CIDR, or two of different families."""
    parts = text.split(",")
    networks = []
    for part in parts:
        try:
            networks.append(ip_network(part, "clusterCIDR"))
        except KubeIpvsError:
            return [f"clusterCIDR: {part!r} is not a CIDR"]
    if len(networks) > 2 or (len(networks) == 2 and networks[0].version == networks[1].version):
        return [f"clusterCIDR {text!r}: one CIDR, or one IPv4 and one IPv6 CIDR separated by a comma"]
    return []


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
