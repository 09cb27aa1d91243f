# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The API's vocabulary: which kinds exist where, Status errors, selectors, patches, validation."""

from __future__ import annotations

import copy
import datetime
import json
import re

# (group/version, plural) -> (kind, namespaced)
RESOURCES = {
    ("v1", "namespaces"): ("Namespace", False),
    ("v1", "nodes"): ("Node", False),
    ("v1", "configmaps"): ("ConfigMap", True),
    ("v1", "pods"): ("Pod", True),
    ("v1", "services"): ("Service", True),
    ("v1", "serviceaccounts"): ("ServiceAccount", True),
    ("v1", "events"): ("Event", True),
    ("apps/v1", "daemonsets"): ("DaemonSet", True),
    ("discovery.k8s.io/v1", "endpointslices"): ("EndpointSlice", True),
    ("rbac.authorization.k8s.io/v1", "clusterrolebindings"): ("ClusterRoleBinding", False),
    ("rbac.authorization.k8s.io/v1", "clusterroles"): ("ClusterRole", False),
}

# Field selectors the real API server supports for these kinds (besides metadata.name/namespace).
FIELD_SELECTORS = {
    "Pod": {"spec.nodeName", "status.phase"},
    "Event": {"involvedObject.kind", "involvedObject.name", "involvedObject.namespace", "involvedObject.uid",
              "reason", "type"},
}
# Strategic merge patch: lists of objects merged by this key instead of replaced.
SMP_MERGE_KEYS = {"containers": "name", "initContainers": "name", "volumes": "name", "volumeMounts": "mountPath",
                  "env": "name", "ports": "containerPort"}

PATH_RE = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"(?:/namespaces/(?P<namespace>[^/]+)(?=/))?/(?P<plural>[a-z]+)(?:/(?P<name>[^/]+))?/?$"
)


def now_rfc3339():
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    """Becomes a Status response: kind Status, status Failure, code, reason, message, details."""

    def __init__(self, code, reason, message, details=None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self):
        body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}
        if self.details:
            body["details"] = self.details
        return body


def group_of(group_version):
    return group_version.split("/")[0] if "/" in group_version else ""


def qualified(kind, plural, group_version, name):
    group = group_of(group_version)
    return f'{plural}{"." + group if group else ""} "{name}"', f'{kind}{"." + group if group else ""} "{name}"'


def not_found(plural, group_version, name):
    return ApiError(404, "NotFound", f"{qualified('', plural, group_version, name)[0]} not found",
                    {"name": name, "group": group_of(group_version), "kind": plural})


def invalid(kind, plural, group_version, name, field, problem):
    return ApiError(422, "Invalid", f"{qualified(kind, plural, group_version, name)[1]} is invalid: {field}: {problem}",
                    {"name": name, "group": group_of(group_version), "kind": kind,
                     "causes": [{"reason": "FieldValueInvalid", "message": problem, "field": field}]})


# ---------------------------------------------------------------------------- selectors and patches

def parse_label_selector(text):
    """Return a predicate over a labels dict for k=v, k==v, k!=v, k, !k, k in (a,b), k notin (a,b)."""
    terms = []
    for raw in re.findall(r"(?:[^,(]|\([^)]*\))+", text or ""):
        term = raw.strip()
        if not term:
            continue
        match = re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", term)
        if match:
            values = {v.strip() for v in match.group(3).split(",")}
            terms.append((match.group(1), match.group(2), values))
        elif term.startswith("!"):
            terms.append((term[1:].strip(), "!exists", None))
        elif "!=" in term:
            key, value = term.split("!=", 1)
            terms.append((key.strip(), "!=", value.strip()))
        elif "=" in term:
            key, value = re.split(r"==?", term, maxsplit=1)
            terms.append((key.strip(), "=", value.strip()))
        elif re.fullmatch(r"[\w./-]+", term):
            terms.append((term, "exists", None))
        else:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {term!r}")

    def matches(labels):
        labels = labels or {}
        for key, op, value in terms:
            present = key in labels
            if op == "=" and labels.get(key) != value:
                return False
            if op == "!=" and present and labels[key] == value:
                return False
            if op == "in" and labels.get(key) not in value:
                return False
            if op == "notin" and present and labels[key] in value:
                return False
            if op == "exists" and not present:
                return False
            if op == "!exists" and present:
                return False
        return True
    return matches


def lookup(obj, dotted):
    for part in dotted.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return "" if obj is None else str(obj)


def parse_field_selector(text, kind):
    allowed = {"metadata.name", "metadata.namespace"} | FIELD_SELECTORS.get(kind, set())
    terms = []
    for term in filter(None, (t.strip() for t in (text or "").split(","))):
        match = re.fullmatch(r"([\w.]+)\s*(!=|==|=)\s*(.*)", term)
        if not match:
            raise ApiError(400, "BadRequest", f"invalid selector: {term!r}; can't understand {term!r}")
        if match.group(1) not in allowed:
            raise ApiError(400, "BadRequest", f'field label not supported: {match.group(1)}')
        terms.append((match.group(1), match.group(2) != "!=", match.group(3)))
    return lambda obj: all((lookup(obj, f) == v) == equal for f, equal, v in terms)


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target, patch):
    """Merge patch, except that the lists in SMP_MERGE_KEYS are merged item by item on their key."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif key in SMP_MERGE_KEYS and isinstance(value, list) and isinstance(result.get(key), list):
            merge_key = SMP_MERGE_KEYS[key]
            merged = [copy.deepcopy(item) for item in result[key]]
            for item in value:
                index = next((i for i, old in enumerate(merged) if old.get(merge_key) == item.get(merge_key)), None)
                if index is None:
                    merged.append(copy.deepcopy(item))
                else:
                    merged[index] = strategic_merge_patch(merged[index], item)
            result[key] = merged
        else:
            result[key] = strategic_merge_patch(result.get(key), value)
    return result


# ---------------------------------------------------------------------------------- validation

def validate(kind, plural, group_version, obj, old=None):
    """What the real API server's validation rejects for the objects the collection writes."""
    name = obj["metadata"]["name"]

    def bad(field, problem):
        return invalid(kind, plural, group_version, name, field, problem)

    if kind == "ConfigMap":
        for key, value in (obj.get("data") or {}).items():
            if not isinstance(value, str):
                raise ApiError(400, "BadRequest", f"ConfigMap in version \"v1\" cannot be handled as a ConfigMap: "
                               f"json: cannot unmarshal {type(value).__name__} into Go struct field "
                               f"ConfigMap.data of type string (key {key!r})")
    elif kind == "DaemonSet":
        spec = obj.get("spec") or {}
        selector = (spec.get("selector") or {}).get("matchLabels")
        if not selector:
            raise bad("spec.selector", "Required value")
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        if any(labels.get(k) != v for k, v in selector.items()):
            raise bad("spec.template.metadata.labels", f"Invalid value: {json.dumps(labels)}: "
                      "`selector` does not match template `labels`")
        validate_pod_spec((spec.get("template") or {}).get("spec") or {}, "spec.template.spec", bad)
        if old is not None and old["spec"].get("selector") != spec.get("selector"):
            raise bad("spec.selector", "Invalid value: field is immutable")
    elif kind == "Pod":
        validate_pod_spec(obj.get("spec") or {}, "spec", bad)
    elif kind == "ClusterRoleBinding":
        role_ref = obj.get("roleRef") or {}
        for field in ("kind", "name"):
            if not role_ref.get(field):
                raise bad(f"roleRef.{field}", "Required value")
        if old is not None and old.get("roleRef") != obj.get("roleRef"):
            raise bad("roleRef", "Invalid value: cannot change roleRef")
    elif kind == "EndpointSlice" and obj.get("addressType") not in ("IPv4", "IPv6", "FQDN"):
        raise bad("addressType", "Unsupported value: supported values: \"FQDN\", \"IPv4\", \"IPv6\"")


def validate_pod_spec(spec, path, bad):
    containers = spec.get("containers") or []
    if not containers:
        raise bad(f"{path}.containers", "Required value")
    for index, container in enumerate(containers):
        for field in ("name", "image"):
            if not container.get(field):
                raise bad(f"{path}.containers[{index}].{field}", "Required value")
