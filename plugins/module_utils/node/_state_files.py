# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""State files: a module's large options as one JSON object in a file (gzip-compressed), not task arguments.

``kubeipvs.node.kube_proxy_state`` with ``dest`` writes a node's desired state as files on the
controller, one per module call, each a JSON object of that module's options. A node module given
``state_src`` gets the file from its action plugin (``plugins/plugin_utils/_state_src_action.py``),
which ships it into the task's temporary directory on the node; ``state_module`` reads it there and
validates its options by the module's own argument spec, as if the task had given them. Megabytes
of desired state then travel compressed, are never templated, and are never echoed back in the
task's result.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.module_utils.common.validation import check_mutually_exclusive
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError, ansible_module
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._shared_run import SharedTail

# JSON of a large state compresses 10-20 times at the fastest level; higher levels gain little and cost seconds.
COMPRESS_LEVEL = 1
GZIP_MAGIC = b"\x1f\x8b"
STATE_SRC_SPEC = {"type": "path"}


def write_state_file(directory, name, options):
    """Write ``options`` to ``directory/name`` atomically; its path.

    A missing directory is made for the owner alone (0700); the file itself is readable by anyone who
    may enter the directory (0644), so an action plugin that runs as the controller's user reads what
    the module wrote as root (``become`` on a task delegated to the controller)."""
    path = os.path.join(directory, name)
    data = state_bytes(options)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, scratch = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                os.fchmod(handle.fileno(), 0o644)
            os.replace(scratch, path)
        except BaseException:
            os.unlink(scratch)
            raise
    except OSError as error:
        raise KubeIpvsError(f"cannot write the state file {path}: {error.strerror}", path=path) from None
    return path


def _compress(text):
    return gzip.compress(text.encode(), compresslevel=COMPRESS_LEVEL, mtime=0)


def _json(value):
    return json.dumps(value, separators=(",", ":"))


def _shared_member(run):
    """The run's items as JSON without brackets, one gzip member, compressed the first time only."""
    if run.encoded is None:
        run.encoded = _compress(_json(run.items)[1:-1])
    return run.encoded


def state_bytes(options):
    """The gzip file of ``options`` as JSON. An option that is a ``SharedTail`` still ending in its run
    gets the run's member as compressed once for every file that shares it: the file is then several
    gzip members in a row, which every gzip reader decompresses as one stream."""
    members, text = [], []
    for index, (option, value) in enumerate(options.items()):
        text.append(("{" if index == 0 else ",") + _json(option) + ":")
        run = value.shared() if isinstance(value, SharedTail) else None
        if run is None:
            text.append(_json(value))
            continue
        head = _json(value[:value.head])
        text.append(head[:-1] + ("," if value.head else ""))
        members += [_compress("".join(text)), _shared_member(run)]
        text = ["]"]
    text.append("}" if options else "{}")
    members.append(_compress("".join(text)))
    return b"".join(members)


def read_state_file(path):
    """The JSON object in ``path`` (gzip-compressed or not); ValueError with the reason otherwise."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as error:
        raise ValueError(f"cannot read state_src {path}: {error.strerror}") from None
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise ValueError(f"state_src {path} is not a valid gzip file: {error}") from None
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError(f"state_src {path} is nested too deeply") from None
    except ValueError as error:
        raise ValueError(f"state_src {path} is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"state_src {path} must hold a JSON object of options, not {type(data).__name__}")
    return data


def _no_constant(name):
    raise ValueError(f"{name} is not a number")


def state_options_from(path, state_options, argument_spec):
    """The options ``path`` holds, validated by their part of ``argument_spec``; ValueError otherwise."""
    data = read_state_file(path)
    if not data:
        raise ValueError(f"state_src {path} holds no option; it should hold {', '.join(state_options)}")
    unknown = sorted(set(data) - set(state_options))
    if unknown:
        raise ValueError(f"state_src {path} holds option(s) {', '.join(unknown)}; it may hold only "
                         f"{', '.join(state_options)}")
    validator = ArgumentSpecValidator({name: argument_spec[name] for name in data})
    try:
        result = validator.validate(data)
    except (OverflowError, ArithmeticError) as error:  # int() of a number too large for a float, as for task args
        raise ValueError(f"state_src {path}: a value cannot be converted ({error}); numbers must be finite") from None
    if result.error_messages:
        raise ValueError(f"state_src {path}: {'; '.join(result.error_messages)}")
    return {name: result.validated_parameters[name] for name in data}


def _with_state_src(kwargs, state_options):
    """AnsibleModule's keyword arguments with ``state_src`` added beside ``state_options``."""
    kwargs = dict(kwargs)
    kwargs["argument_spec"] = dict(kwargs["argument_spec"], state_src=STATE_SRC_SPEC)
    kwargs["mutually_exclusive"] = list(kwargs.get("mutually_exclusive") or []) + [
        (name, "state_src") for name in state_options]
    kwargs["required_one_of"] = [(*group, "state_src") if set(group) & set(state_options) else group
                                 for group in kwargs.get("required_one_of") or []]
    return kwargs


def state_module(factory, state_options, **kwargs):
    """``ansible_module(factory, **kwargs)`` that also takes ``state_options`` from a ``state_src`` file.

    The file's options replace their defaults in ``module.params`` after the same checks the task's
    arguments get: the argument spec (types, choices, sub-options) and the mutual exclusions.
    """
    module = ansible_module(factory, **_with_state_src(kwargs, state_options))
    path = module.params.get("state_src")
    if path is None:
        return module
    try:
        options = state_options_from(path, state_options, kwargs["argument_spec"])
    except ValueError as error:
        module.fail_json(msg=str(error))
    spec = kwargs["argument_spec"]
    # What the task gave: an option with a value other than its default (a default is not a choice).
    given = {name: value for name, value in module.params.items()
             if name in spec and name not in options and value is not None and value != spec[name].get("default")}
    try:
        check_mutually_exclusive(kwargs.get("mutually_exclusive"), dict(given, **options))
    except TypeError as error:
        module.fail_json(msg=f"state_src {path}: {error}")
    _echo_without_state(module)
    module.params.update(options)
    return module


def _echo_without_state(module):
    """Make the result's ``invocation`` echo the options as the task gave them - the file's path, not
    its megabytes, which ansible-core would otherwise copy back into every result from ``params``."""
    echo = {"module_args": dict(module.params)}
    return_formatted = module._return_formatted  # pylint: disable=protected-access

    def without_state(kwargs):
        kwargs.setdefault("invocation", echo)
        return return_formatted(kwargs)

    module._return_formatted = without_state  # pylint: disable=protected-access
