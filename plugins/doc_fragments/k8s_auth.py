# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    # Options shared by the modules that talk to the Kubernetes API (like kubernetes.core's k8s_auth_options).
    DOCUMENTATION = r"""
options:
  kubeconfig:
    description:
      - Path to a kubeconfig file. Can also be set with the E(K8S_AUTH_KUBECONFIG) environment variable.
      - When neither this nor O(host) is given, the module uses the in-cluster service account when it
        runs in a pod, otherwise E(KUBECONFIG) or C(~/.kube/config).
    type: path
  context:
    description:
      - The kubeconfig context to use instead of the current one. Can also be set with E(K8S_AUTH_CONTEXT).
    type: str
  host:
    description:
      - URL of the Kubernetes API server, for example V(https://10.0.0.1:6443). Overrides the server of
        the kubeconfig. Can also be set with E(K8S_AUTH_HOST).
    type: str
  api_key:
    description:
      - A bearer token for the API server. Overrides the kubeconfig's user. Can also be set with
        E(K8S_AUTH_API_KEY).
    type: str
  ca_cert:
    description:
      - Path to the CA certificate that signed the API server's certificate. Can also be set with
        E(K8S_AUTH_SSL_CA_CERT).
    type: path
    aliases: [ssl_ca_cert]
  client_cert:
    description:
      - Path to a client certificate for authenticating to the API server. Can also be set with
        E(K8S_AUTH_CERT_FILE).
    type: path
    aliases: [cert_file]
  client_key:
    description:
      - Path to the key of O(client_cert). Can also be set with E(K8S_AUTH_KEY_FILE).
    type: path
    aliases: [key_file]
  validate_certs:
    description:
      - Whether to verify the API server's TLS certificate. Not set - as the kubeconfig says (verify by
        default). Can also be set with E(K8S_AUTH_VERIFY_SSL).
    type: bool
    aliases: [verify_ssl]
  request_timeout:
    description: Seconds to wait for one API request before giving up.
    type: int
    default: 30
requirements:
  - kubernetes >= 29.0.0 (Python library, on the host that runs the module - usually the controller)
"""
