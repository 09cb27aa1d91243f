# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A small Kubernetes API server for the tests of the kube_proxy* modules.

It speaks the REST protocol the real ``kubernetes`` Python client uses (JSON over plain HTTP,
bearer tokens, resourceVersion conflicts, label and field selectors, dryRun=All, merge and
strategic-merge patches, Status objects shaped like the real ones) for the handful of kinds the
collection reads and writes, and runs a DaemonSet controller that (re)creates pods on nodes and
marks them Ready after a delay. Failures can be injected (pods that never become Ready on a node,
409 storms, 500s) through ``ApiServer.faults`` or ``POST /_test/faults``.

It is no kube-apiserver: no admission, no watch, no protobuf, no server-side apply. It rejects
what a real one rejects for the objects the collection sends, and nothing more.

This file holds the store and the HTTP layer; api.py the kinds, Status errors, selectors,
patches and validation; controller.py the DaemonSet controller and kubelet stand-in.
Run it alone with ``python -m tests.apiserver --port 8080 --nodes node1,node2``.
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import secrets
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from .api import (
    PATH_RE,
    RESOURCES,
    ApiError,
    group_of,
    invalid,
    merge_patch,
    not_found,
    now_rfc3339,
    parse_field_selector,
    parse_label_selector,
    qualified,
    strategic_merge_patch,
    validate,
)
from .controller import DaemonSetController

# ------------------------------------------------------------------------------------------ store


class Faults:
    """Failure switches. Counters count down once per matching request."""

    def __init__(self):
        self.never_ready_nodes = set()
        self.conflicts = 0        # next N PUT/PATCH requests answer 409 Conflict
        self.errors = 0           # next N requests (any verb) answer 500
        self.unavailable = False  # every request answers 503

    def update(self, document):
        if "never_ready_nodes" in document:
            self.never_ready_nodes = set(document["never_ready_nodes"])
        for key in ("conflicts", "errors", "unavailable"):
            if key in document:
                setattr(self, key, document[key])

    def as_dict(self):
        return {"never_ready_nodes": sorted(self.never_ready_nodes), "conflicts": self.conflicts,
                "errors": self.errors, "unavailable": self.unavailable}


class Store:
    """Objects by (kind, namespace, name) with one resourceVersion counter, as etcd gives."""

    def __init__(self):
        self.lock = threading.RLock()
        self.objects = {}
        self.revision = 1
        self.requests = []  # (method, path, query) of every API request, for tests to inspect

    def next_revision(self):
        self.revision += 1
        return str(self.revision)

    def get(self, kind, namespace, name):
        with self.lock:
            obj = self.objects.get((kind, namespace or "", name))
            return copy.deepcopy(obj) if obj else None

    def list(self, kind, namespace=None):
        with self.lock:
            return [copy.deepcopy(o) for (k, ns, _n), o in sorted(self.objects.items())
                    if k == kind and (namespace is None or ns == namespace)]

    def put(self, obj):
        """Store as-is after stamping uid/resourceVersion; for tests and the controller."""
        with self.lock:
            kind = obj["kind"]
            metadata = obj.setdefault("metadata", {})
            old = self.objects.get((kind, metadata.get("namespace", ""), metadata["name"]))
            metadata.setdefault("uid", old["metadata"]["uid"] if old else str(uuid.uuid4()))
            metadata.setdefault("creationTimestamp", old["metadata"]["creationTimestamp"] if old else now_rfc3339())
            metadata["resourceVersion"] = self.next_revision()
            self.objects[(kind, metadata.get("namespace", ""), metadata["name"])] = copy.deepcopy(obj)
            return copy.deepcopy(obj)

    def delete(self, kind, namespace, name):
        with self.lock:
            obj = self.objects.pop((kind, namespace or "", name), None)
            if obj is None:
                return None
            # Background garbage collection of dependents (a DaemonSet's pods).
            uid = obj["metadata"]["uid"]
            for key, dependent in list(self.objects.items()):
                if any(ref.get("uid") == uid for ref in dependent["metadata"].get("ownerReferences", [])):
                    del self.objects[key]
            return obj


# ------------------------------------------------------------------------------------ HTTP layer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kubeipvs-test-apiserver/0.1"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        self.handle_request("GET")

    def do_POST(self):
        self.handle_request("POST")

    def do_PUT(self):
        self.handle_request("PUT")

    def do_PATCH(self):
        self.handle_request("PATCH")

    def do_DELETE(self):
        self.handle_request("DELETE")

    def handle_request(self, method):
        api = self.server.api
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            if url.path == "/_test/faults":
                if method == "POST":
                    api.faults.update(json.loads(raw or b"{}"))
                self.reply(200, api.faults.as_dict())
                return
            code, body = api.dispatch(method, url.path, query, raw, self.headers)
        except ApiError as error:
            code, body = error.code, error.status()
        self.reply(code, body)

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class ApiServer:
    """The server: ``start()`` serves on a thread, ``stop()`` shuts it and the controller down."""

    def __init__(self, host="127.0.0.1", port=0, token="test-token", read_only_tokens=(),
                 recreate_delay=0.2, ready_delay=0.2, namespaces=("default", "kube-system", "kube-public")):
        self.store = Store()
        self.faults = Faults()
        self.version = "v1.31.0"  # the gitVersion /version reports; tests of version gates change it
        self.tokens = {token: "admin"}
        self.tokens.update({t: "viewer" for t in read_only_tokens})
        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.httpd.api = self
        self.controller = DaemonSetController(self, recreate_delay, ready_delay)
        self.serve_thread = threading.Thread(target=self.httpd.serve_forever, name="apiserver", daemon=True)
        for namespace in namespaces:
            self.store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace},
                            "status": {"phase": "Active"}})

    @property
    def url(self):
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self):
        self.serve_thread.start()
        self.controller.thread.start()
        return self

    def stop(self):
        self.controller.stop_event.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.controller.thread.join(5)
        self.serve_thread.join(5)

    # ------------------------------------------------------------------ request handling

    def dispatch(self, method, path, query, raw, headers):
        if self.faults.unavailable:
            raise ApiError(503, "ServiceUnavailable", "the server is currently unable to handle the request")
        user = self.authenticate(headers)
        with self.store.lock:  # requests run on several threads; counters count down once each
            self.store.requests.append((method, path, dict(query)))
            if self.faults.errors > 0:
                self.faults.errors -= 1
                raise ApiError(500, "InternalError", "Internal error occurred: injected failure")
        if method == "GET" and path in ("/version", "/version/"):
            major, minor = self.version.lstrip("v").split(".")[:2]
            return 200, {"major": major, "minor": minor, "gitVersion": f"{self.version}-kubeipvs-test",
                         "platform": "linux/amd64"}
        if method == "GET" and path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if method == "GET" and path == "/apis":
            groups = sorted({gv for gv, _p in RESOURCES if "/" in gv})
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": group_of(gv), "versions": [{"groupVersion": gv, "version": gv.split("/")[1]}],
                 "preferredVersion": {"groupVersion": gv, "version": gv.split("/")[1]}} for gv in groups]}
        match = PATH_RE.match(path)
        if not match:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        group_version = match["core"] or f'{match["group"]}/{match["version"]}'
        plural, namespace, name = match["plural"], match["namespace"], match["name"]
        if (group_version, plural) not in RESOURCES:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        kind, namespaced = RESOURCES[(group_version, plural)]
        if namespace and not namespaced:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if method != "GET":
            self.authorize(user, method, plural, group_version, name, namespace)
        dry_run = query.get("dryRun")
        if dry_run not in (None, "All"):
            raise ApiError(400, "BadRequest", f'Invalid dry run value: "{dry_run}", the only valid value is "All"')
        context = (kind, plural, group_version, namespace)
        with self.store.lock:
            if method == "GET" and name is None:
                return 200, self.list(context, query)
            if method == "GET":
                return 200, self.read(context, name)
            if method == "POST" and name is None:
                return 201, self.create(context, self.decode(raw), bool(dry_run))
            if name is None:
                raise ApiError(405, "MethodNotAllowed",
                               "the server does not allow this method on the requested resource")
            if method in ("PUT", "PATCH") and self.faults.conflicts > 0:
                self.faults.conflicts -= 1
                raise self.conflict(plural, group_version, name)
            if method == "PUT":
                return 200, self.replace(context, name, self.decode(raw), bool(dry_run))
            if method == "PATCH":
                return 200, self.patch(context, name, self.decode(raw), headers.get("Content-Type", ""), bool(dry_run))
            if method == "DELETE":
                return 200, self.delete(context, name, bool(dry_run))
        raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    def authenticate(self, headers):
        header = headers.get("Authorization", "")
        token = header[len("Bearer "):] if header.startswith("Bearer ") else None
        if token not in self.tokens:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        return self.tokens[token]

    @staticmethod
    def authorize(user, method, plural, group_version, name, namespace):
        if user == "admin":
            return
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]
        where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
        raise ApiError(403, "Forbidden", f'{qualified("", plural, group_version, name or "")[0]} is forbidden: User '
                       f'"{user}" cannot {verb} resource "{plural}" in API group "{group_of(group_version)}"{where}',
                       {"name": name or "", "group": group_of(group_version), "kind": plural})

    @staticmethod
    def decode(raw):
        try:
            body = json.loads(raw or b"null")
        except ValueError as error:
            raise ApiError(400, "BadRequest", f"the request body is not valid JSON: {error}") from None
        if not isinstance(body, (dict, list)):
            raise ApiError(400, "BadRequest", "the request body must be a JSON object")
        return body

    @staticmethod
    def conflict(plural, group_version, name):
        where = qualified("", plural, group_version, name)[0]
        return ApiError(409, "Conflict", f"Operation cannot be fulfilled on {where}: "
                        "the object has been modified; please apply your changes to the latest version and try again",
                        {"name": name, "group": group_of(group_version), "kind": plural})

    def list(self, context, query):
        kind, _plural, group_version, namespace = context
        labels = parse_label_selector(query.get("labelSelector"))
        fields = parse_field_selector(query.get("fieldSelector"), kind)
        items = [o for o in self.store.list(kind, namespace)
                 if labels(o["metadata"].get("labels")) and fields(o)]
        for item in items:  # the real server leaves kind/apiVersion off list items
            item.pop("kind", None)
            item.pop("apiVersion", None)
        start = int(base64.b64decode(query["continue"]).decode()) if query.get("continue") else 0
        limit = int(query.get("limit") or 0)
        end = start + limit if limit else len(items)
        metadata = {"resourceVersion": str(self.store.revision)}
        if end < len(items):
            metadata["continue"] = base64.b64encode(str(end).encode()).decode()
            metadata["remainingItemCount"] = len(items) - end
        return {"kind": f"{kind}List", "apiVersion": group_version, "metadata": metadata, "items": items[start:end]}

    def read(self, context, name):
        kind, plural, group_version, namespace = context
        obj = self.store.get(kind, namespace, name)
        if obj is None:
            raise not_found(plural, group_version, name)
        return obj

    def check_body(self, context, body, name=None):
        kind, plural, group_version, namespace = context
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the request body must be a JSON object")
        if body.get("apiVersion", group_version) != group_version or body.get("kind", kind) != kind:
            raise ApiError(400, "BadRequest", f'the API version in the data ({body.get("apiVersion")}) and kind '
                           f'({body.get("kind")}) do not match the expected {group_version} {kind} for '
                           f'the URL /{plural}')
        metadata = body.setdefault("metadata", {}) or {}
        body["metadata"] = metadata
        if not metadata.get("name") and metadata.get("generateName") and name is None:
            metadata["name"] = metadata["generateName"] + secrets.token_hex(3)[:5]
        if not metadata.get("name"):
            raise invalid(kind, plural, group_version, "", "metadata.name",
                          "Required value: name or generateName is required")
        if name is not None and metadata["name"] != name:
            raise ApiError(400, "BadRequest", f'the name of the object ({metadata["name"]}) does not match the '
                           f"name on the URL ({name})")
        if namespace:
            if metadata.get("namespace", namespace) != namespace:
                raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the "
                               "namespace sent on the request")
            metadata["namespace"] = namespace
            if self.store.get("Namespace", "", namespace) is None:
                raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found',
                               {"name": namespace, "kind": "namespaces"})
        else:
            metadata.pop("namespace", None)
        body["apiVersion"], body["kind"] = group_version, kind

    def create(self, context, body, dry_run):
        kind, plural, group_version, namespace = context
        self.check_body(context, body)
        name = body["metadata"]["name"]
        if self.store.get(kind, namespace, name) is not None:
            raise ApiError(409, "AlreadyExists", f"{qualified('', plural, group_version, name)[0]} already exists",
                           {"name": name, "group": group_of(group_version), "kind": plural})
        validate(kind, plural, group_version, body)
        for key in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp"):
            body["metadata"].pop(key, None)
        if kind == "DaemonSet":
            body["metadata"]["generation"] = 1
            body["spec"].setdefault("updateStrategy", {"type": "RollingUpdate", "rollingUpdate": {
                "maxUnavailable": 1, "maxSurge": 0}})
            body["spec"].setdefault("revisionHistoryLimit", 10)
            body["status"] = {}
        if dry_run:
            body["metadata"]["uid"] = str(uuid.uuid4())
            body["metadata"]["creationTimestamp"] = now_rfc3339()
            return body
        return self.store.put(body)

    def replace(self, context, name, body, dry_run):
        kind, plural, group_version, namespace = context
        self.check_body(context, body, name)
        old = self.store.get(kind, namespace, name)
        if old is None:
            raise not_found(plural, group_version, name)
        version = body["metadata"].get("resourceVersion")
        if version and version != old["metadata"]["resourceVersion"]:
            raise self.conflict(plural, group_version, name)
        validate(kind, plural, group_version, body, old)
        for key in ("uid", "creationTimestamp", "generation"):
            if key in old["metadata"]:
                body["metadata"][key] = old["metadata"][key]
        if "status" in old and kind in ("DaemonSet", "Pod", "Service", "Node", "Namespace"):
            body["status"] = old["status"]  # the main resource ignores status; /status updates it
        if kind == "DaemonSet" and body.get("spec") != old.get("spec"):
            body["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        body["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        if dry_run or body == old:  # a no-op update keeps the resourceVersion, as etcd does
            return body if dry_run else old
        return self.store.put(body)

    def patch(self, context, name, patch, content_type, dry_run):
        kind, plural, group_version, namespace = context
        old = self.store.get(kind, namespace, name)
        if old is None:
            raise not_found(plural, group_version, name)
        media = content_type.split(";")[0].strip()
        if media == "application/merge-patch+json":
            body = merge_patch(old, patch)
        elif media == "application/strategic-merge-patch+json":
            body = strategic_merge_patch(old, patch)
        else:
            raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - "
                           f"accepted media types include: application/merge-patch+json, "
                           f"application/strategic-merge-patch+json (got {media!r})")
        if not (isinstance(patch, dict) and (patch.get("metadata") or {}).get("resourceVersion")):
            body["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        return self.replace(context, name, body, dry_run)

    def delete(self, context, name, dry_run):
        kind, plural, group_version, namespace = context
        obj = self.store.get(kind, namespace, name)
        if obj is None:
            raise not_found(plural, group_version, name)
        if not dry_run:
            self.store.delete(kind, namespace, name)
        if kind == "Pod":
            return obj
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {"name": name, "group": group_of(group_version), "kind": plural,
                            "uid": obj["metadata"]["uid"]}}


def main(argv=None):
    parser = argparse.ArgumentParser(description="Kubernetes API test server for kubeipvs.node's tests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default="test-token")
    parser.add_argument("--nodes", default="", help="comma-separated node names to create")
    parser.add_argument("--recreate-delay", type=float, default=0.2)
    parser.add_argument("--ready-delay", type=float, default=0.2)
    args = parser.parse_args(argv)
    server = ApiServer(args.host, args.port, args.token, recreate_delay=args.recreate_delay,
                       ready_delay=args.ready_delay)
    for node in filter(None, args.nodes.split(",")):
        server.store.put({"apiVersion": "v1", "kind": "Node",
                          "metadata": {"name": node, "labels": {"kubernetes.io/os": "linux",
                                                                "kubernetes.io/hostname": node}}})
    server.start()
    print(server.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
