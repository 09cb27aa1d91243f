# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A lab backend: answers every HTTP GET with its own name, on [::]:8080 (IPv4 and IPv6)."""

import http.server
import socket
import sys

NAME = sys.argv[1].encode()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(NAME) + 1))
        self.end_headers()
        self.wfile.write(NAME + b"\n")

    def log_message(self, *args):
        pass


class DualStackServer(http.server.HTTPServer):
    address_family = socket.AF_INET6

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


DualStackServer(("::", 8080), Handler).serve_forever()
