# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Connection tracking sizing as kube-proxy computes it.

Pure Python. Reading and writing the values themselves goes through node/_sysctl.py and
node/_kmod.py; the CPU count and the hash size checks are node/_conntrack.py's.
"""

from __future__ import annotations

import ipaddress
import re

from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError

# kube-proxy's KubeProxyConfiguration defaults (conntrack.maxPerCore, .min, .tcpEstablishedTimeout,
# .tcpCloseWaitTimeout).
DEFAULT_MAX_PER_CORE = 32768
DEFAULT_MIN = 131072
DEFAULT_TCP_TIMEOUT_ESTABLISHED = 86400
DEFAULT_TCP_TIMEOUT_CLOSE_WAIT = 3600
MAX_KEY = "net.netfilter.nf_conntrack_max"
COUNT_KEY = "net.netfilter.nf_conntrack_count"
TIMEOUT_ESTABLISHED_KEY = "net.netfilter.nf_conntrack_tcp_timeout_established"
TIMEOUT_CLOSE_WAIT_KEY = "net.netfilter.nf_conntrack_tcp_timeout_close_wait"
HASHSIZE_PARAM = "hashsize"
HASHSIZE_PATH = "/sys/module/nf_conntrack/parameters/hashsize"
DEFAULT_SYSCTL_FILE = "/etc/sysctl.d/90-kubeipvs-conntrack.conf"
KUBE_PROXY_NOTE = (
    "kube-proxy sets nf_conntrack_max, the hash size and the TCP timeouts itself at every start."
    " To keep the values set here, give it conntrack.maxPerCore: 0 (and tcpEstablishedTimeout: 0s,"
    " tcpCloseWaitTimeout: 0s) in its KubeProxyConfiguration."
)
KUBE_PROXY_CONNTRACK = {"maxPerCore": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"}


# The kernel's limits: nf_conntrack_max and the counts are C ints, a TCP timeout is kept in jiffies
# in an int (INT_MAX / HZ with HZ up to 1000), and the hash table refuses more buckets than
# INT_MAX / sizeof(a bucket head) - above these a value is refused half-way, or allocates gigabytes.
INT_MAX = 2 ** 31 - 1
LIMITS = {"max": INT_MAX, "min": INT_MAX, "max_per_core": INT_MAX, "cpus": 65536, "hashsize": INT_MAX // 8,
          "tcp_timeout_established": INT_MAX // 1000, "tcp_timeout_close_wait": INT_MAX // 1000}


def require_positive(**values):
    """Each given (non-None) value must be a positive integer within the kernel's limit for it
    (LIMITS); the error names the option."""
    for option, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise KubeIpvsError(f"{option} must be a positive integer, got {value!r}"[:300], option=option)
        limit = LIMITS.get(option, INT_MAX)
        if value > limit:
            raise KubeIpvsError(f"{option} must be at most {limit}, the kernel's limit, got {value}"[:300],
                                option=option)


def compute_sizing(cpus, max_per_core=DEFAULT_MAX_PER_CORE, minimum=DEFAULT_MIN, maximum=None, hashsize=None):
    """kube-proxy's figures: nf_conntrack_max = max(max_per_core x CPUs, min), hashsize = max / 4.

    An explicit ``maximum`` or ``hashsize`` replaces the computed one.
    """
    require_positive(cpus=cpus, max_per_core=max_per_core, min=minimum, max=maximum, hashsize=hashsize)
    if maximum is None:
        maximum = max(max_per_core * cpus, minimum)
        source = "min" if minimum >= max_per_core * cpus else "max_per_core"
        if maximum > INT_MAX:
            raise KubeIpvsError(f"max_per_core x {cpus} CPUs is {maximum}, above nf_conntrack_max's limit {INT_MAX}; "
                                "lower max_per_core or give max", option="max_per_core")
    else:
        source = "explicit"
    if hashsize is None:
        hashsize = max(1, maximum // 4)
    return {"cpus": cpus, "nf_conntrack_max": maximum, "hashsize": hashsize, "max_source": source}


# --- conntrack flows --------------------------------------------------------------------------
FLOW_PROTOCOLS = ("udp", "tcp", "sctp")


def flow_destinations(values, where="destinations"):
    """{family: [CIDR, ...]} of the original destinations to match; KubeIpvsError names a bad one."""
    by_family = {"ipv4": [], "ipv6": []}
    if not values:
        raise KubeIpvsError(f"{where} must name at least one network (for example 10.96.0.0/12)")
    for value in values:
        try:
            network = ipaddress.ip_network(value, strict=False)
        except (TypeError, ValueError) as error:
            raise KubeIpvsError(f"{where}: {value!r} is not a network in CIDR notation ({error})") from None
        family = "ipv4" if network.version == 4 else "ipv6"
        if str(network) not in by_family[family]:
            by_family[family].append(str(network))
    return {family: networks for family, networks in by_family.items() if networks}


def flows_counted(stderr):
    """The count conntrack prints on stderr ("conntrack v1.4.7 (conntrack-tools): 3 flow entries
    have been deleted."); None when it printed none."""
    match = re.search(r"(\d+) flow entries have been (?:shown|deleted)", stderr or "")
    return int(match.group(1)) if match else None
