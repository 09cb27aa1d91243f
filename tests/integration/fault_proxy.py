# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A fault-injecting HTTPS proxy in front of the real API server, for what a real server does not
do on demand. Every request passes through unchanged (with the client's bearer token) except:

- ``conflicts = N``: the next N updates (PUT) meet a real conflict: just before forwarding one, the
  proxy changes the same object as the lab's administrator (an annotation), so the API server
  itself answers 409 Conflict to the client's now stale resourceVersion;
- ``errors = N``: the next N requests are answered 500 with the Status the API server sends for an
  internal error (``apierrors.NewInternalError``: an etcd timeout, as a loaded control plane
  answers), and never reach it;
- ``version = "v1.40.2"``: ``/version`` answers the real server's document with that version.

``requests`` lists (method, path with query, status) of everything the proxy answered. Started per
test (a thread of the test process, a port on 127.0.0.1, a certificate of the lab's CA) and stopped
at the test's teardown."""

from __future__ import annotations

import http.client
import http.server
import json
import re
import ssl
import threading
import urllib.parse

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
              "host", "content-length", "accept-encoding"}
ETCD_TIMEOUT = "etcdserver: request timed out"


def internal_error(cause: str = ETCD_TIMEOUT) -> dict:
    """The Status kube-apiserver answers for an internal error."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": f"Internal error occurred: {cause}", "reason": "InternalError",
            "details": {"causes": [{"message": cause}]}, "code": 500}


class FaultProxy:
    def __init__(self, upstream: str, ca_cert, certificate, key, admin):
        """``upstream``: the API server's URL; ``ca_cert``: the CA that signed it and
        ``certificate``/``key`` (the proxy's own, for 127.0.0.1); ``admin``: a client for the
        changes that make a conflict (``call(method, path, body, content_type)``)."""
        url = urllib.parse.urlparse(upstream)
        self.upstream = (url.hostname, url.port)
        self.upstream_context = ssl.create_default_context(cafile=str(ca_cert))
        self.admin = admin
        self.conflicts = 0
        self.errors = 0
        self.version = None
        self.requests: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()
        self.made_stale = 0
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(certificate), str(key))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, name="fault-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FaultProxy:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=30)

    # ---- what happens to one request

    def take(self, attribute: str) -> bool:
        with self.lock:
            left = getattr(self, attribute)
            if left > 0:
                setattr(self, attribute, left - 1)
                return True
            return False

    def make_stale(self, path: str) -> None:
        """Change the object at ``path`` so the update about to be forwarded is stale."""
        with self.lock:
            self.made_stale += 1
            stamp = str(self.made_stale)
        status, body = self.admin.call("PATCH", path, {"metadata": {"annotations": {"kubeipvs.test/conflict": stamp}}},
                                       "application/merge-patch+json")
        if status != 200:
            raise RuntimeError(f"fault proxy: could not change {path} to make a conflict: {status} {body}")

    def forward(self, method: str, target: str, headers, body: bytes | None) -> tuple[int, list, bytes]:
        connection = http.client.HTTPSConnection(*self.upstream, context=self.upstream_context, timeout=120)
        try:
            connection.request(method, target, body=body,
                               headers={k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP})
            response = connection.getresponse()
            data = response.read()
            return response.status, [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP], data
        finally:
            connection.close()

    def answer(self, method: str, target: str, headers, body: bytes | None) -> tuple[int, list, bytes]:
        path = urllib.parse.urlparse(target).path
        if self.take("errors"):
            status = internal_error()
            return 500, [("Content-Type", "application/json")], json.dumps(status).encode()
        if method == "PUT" and self.take("conflicts"):
            self.make_stale(path)
        status, response_headers, data = self.forward(method, target, headers, body)
        if path == "/version" and status == 200 and self.version:
            document = json.loads(data)
            major, minor = re.match(r"v(\d+)\.(\d+)", self.version).groups()
            document.update(gitVersion=self.version, major=major, minor=minor)
            data = json.dumps(document).encode()
        return status, response_headers, data

    def handler(self):
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 60

            def relay(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                try:
                    status, headers, data = proxy.answer(self.command, self.path, self.headers, body)
                except (OSError, http.client.HTTPException, RuntimeError) as error:
                    status, headers = 502, [("Content-Type", "text/plain")]
                    data = f"fault proxy: {error}".encode()
                with proxy.lock:
                    proxy.requests.append((self.command, self.path, status))
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = relay

            def log_message(self, *args):
                pass

        return Handler
