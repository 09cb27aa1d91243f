# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    # The named KubeProxyConfiguration fields kube_proxy_config and kube_proxy set (module_utils
    # _kube_proxy_config OPTION_PATHS: one list of the fields and their paths).
    DOCUMENTATION = r"""
options:
  mode:
    description:
      - The proxy mode. V('') is the platform default; V(kernelspace) exists only on Windows and is refused.
    type: str
  ipvs_scheduler:
    description: C(ipvs.scheduler), for example V(rr), V(wrr), V(lc), V(sh), V(mh).
    type: str
  ipvs_strict_arp:
    description: C(ipvs.strictARP) - kube-proxy sets C(arp_ignore=1) and C(arp_announce=2) (needed by MetalLB L2).
    type: bool
  ipvs_exclude_cidrs:
    description: C(ipvs.excludeCIDRs) - IPVS services in these networks are left alone by kube-proxy's cleanup.
    type: list
    elements: str
  ipvs_sync_period:
    description: C(ipvs.syncPeriod), a duration such as V(30s).
    type: str
  ipvs_min_sync_period:
    description: C(ipvs.minSyncPeriod), a duration such as V(1s).
    type: str
  ipvs_tcp_timeout:
    description: C(ipvs.tcpTimeout) - idle timeout of established TCP IPVS connections; V(0s) leaves the kernel's.
    type: str
  ipvs_tcp_fin_timeout:
    description: C(ipvs.tcpFinTimeout) - timeout of IPVS TCP connections after a FIN.
    type: str
  ipvs_udp_timeout:
    description: C(ipvs.udpTimeout) - timeout of IPVS UDP flows.
    type: str
  conntrack_max_per_core:
    description:
      - C(conntrack.maxPerCore). V(0) makes kube-proxy leave C(nf_conntrack_max) and the hash size alone
        (use it when the node role sizes conntrack).
    type: int
  conntrack_min:
    description: C(conntrack.min).
    type: int
  conntrack_tcp_established_timeout:
    description: C(conntrack.tcpEstablishedTimeout), a duration such as V(24h0m0s).
    type: str
  conntrack_tcp_close_wait_timeout:
    description: C(conntrack.tcpCloseWaitTimeout), a duration such as V(1h0m0s).
    type: str
  cluster_cidr:
    description:
      - C(clusterCIDR) - the pods' networks (comma-separated for dual-stack); kube-proxy masquerades
        service traffic from outside them.
    type: str
"""
