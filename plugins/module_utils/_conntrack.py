# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Connection tracking sizing as kube-proxy computes it, and the checks around the hash table size.

Pure Python. Reading and writing the values themselves goes through _sysctl and _kmod.
"""

from __future__ import annotations

import os

from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils._files import under_root

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


def require_positive(**values):
    """Each given (non-None) value must be a positive integer; the error names the option."""
    for option, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise KubeIpvsError(f"{option} must be a positive integer, got {value!r}", option=option)


def compute_sizing(cpus, max_per_core=DEFAULT_MAX_PER_CORE, minimum=DEFAULT_MIN, maximum=None, hashsize=None):
    """kube-proxy's figures: nf_conntrack_max = max(max_per_core x CPUs, min), hashsize = max / 4.

    An explicit ``maximum`` or ``hashsize`` replaces the computed one.
    """
    require_positive(cpus=cpus, max_per_core=max_per_core, min=minimum, max=maximum, hashsize=hashsize)
    if maximum is None:
        maximum = max(max_per_core * cpus, minimum)
        source = "min" if minimum >= max_per_core * cpus else "max_per_core"
    else:
        source = "explicit"
    if hashsize is None:
        hashsize = max(1, maximum // 4)
    return {"cpus": cpus, "nf_conntrack_max": maximum, "hashsize": hashsize, "max_source": source}


def cpu_count():
    """CPUs this process may run on, as Go's runtime.NumCPU (what kube-proxy uses) counts them."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def hashsize_blocker(root="/"):
    """Why the hash size cannot be changed live here, or None.

    The kernel only lets the initial network namespace write it (EOPNOTSUPP elsewhere), and a
    container usually sees /sys read-only.
    """
    try:
        own = os.readlink(under_root(root, "/proc/self/ns/net"))
        initial = os.readlink(under_root(root, "/proc/1/ns/net"))
    except OSError:
        own = initial = None  # cannot tell (no permission on pid 1): let the write decide
    if own != initial:
        return (
            f"this process runs in network namespace {own}, not the initial one ({initial}); the kernel only"
            f" accepts {HASHSIZE_PATH} from the initial network namespace: run on the host"
        )
    path = under_root(root, HASHSIZE_PATH)
    try:
        read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if read_only:
        return f"{HASHSIZE_PATH} is on a read-only file system (a container's /sys?): run on the host"
    return None
