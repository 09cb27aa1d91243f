"""A bytecode cache for the zips Ansible runs its modules from - installed on molecule's lab nodes only.

Python's zipimport cannot write .pyc files beside a zip's sources, so every module task compiles
its whole payload again: ansible-core's module_utils and the collection's. On a TCG node that is
about half of a module task's time (dataplane_facts: 7.4 s without the cache, 3.8-4.8 s with it,
on an idle lab node). `lab.py up` installs this file and a .pth that imports it on every node when
KUBEIPVS_LAB_ZIPCACHE=1 (`make molecule` sets it; `make demo` and the benchmarks do not, so their
figures are a plain node's).

The key is the interpreter's magic number and the source text: a changed source is compiled
again. A cached code object takes the path of the zip it is loaded from, as if compiled there.
zipimport asks twice for each module's code (once for its file name, once to run it): the second
answer comes from memory (a plain dict: functools would be one more import at every Python start).
A cache file is read whole and unmarshalled from bytes, not from the open file in small reads.
Together: Ansible's ping payload 2.0-2.3 s before, 1.7-2.0 s after, on an idle lab node.
"""

import _frozen_importlib_external  # loaded by every interpreter: its magic number costs no import
import _sha256  # not hashlib: its OpenSSL start would add ~0.1 s to every Python start on a TCG node
import marshal
import os
import zipimport

DIRECTORY = os.environ.get("KUBEIPVS_LAB_ZIPCACHE_DIR", "/var/cache/kubeipvs-lab-zipcache")
_compile_source = zipimport._compile_source
_loaded = {}  # (pathname, source) -> code, for zipimport's second question about the same module


def _with_filename(code, filename):
    consts = tuple(_with_filename(c, filename) if isinstance(c, type(code)) else c for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


def compile_source(pathname, source):
    code = _loaded.get((pathname, source))
    if code is None:
        code = _loaded[pathname, source] = _cached_or_compiled(pathname, source)
    return code


def _cached_or_compiled(pathname, source):
    path = os.path.join(DIRECTORY, _sha256.sha256(_frozen_importlib_external.MAGIC_NUMBER + source).hexdigest())
    try:
        with open(path, "rb") as cached:
            return _with_filename(marshal.loads(cached.read()), pathname)
    except (OSError, EOFError, ValueError, TypeError):
        pass
    code = _compile_source(pathname, source)
    try:
        os.makedirs(DIRECTORY, exist_ok=True)
        partial = f"{path}.{os.getpid()}"
        with open(partial, "wb") as out:
            marshal.dump(code, out)
        os.replace(partial, path)
    except OSError:
        pass
    return code


zipimport._compile_source = compile_source
