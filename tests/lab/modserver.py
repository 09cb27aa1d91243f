"""Runs Ansible's pipelined module payloads on molecule's lab nodes in processes forked from one
that has imported ansible-core's module_utils already - installed on molecule's lab nodes only.

On a TCG node a module task spends about 2.8 s importing ansible.module_utils.basic before the
module runs: its import is mostly class and dataclass creation, which no bytecode cache saves
(zipcache.py saves the compiling). This server imports it once, from a copy of the controller's
own ansible-core module_utils (the files every payload carries, byte for byte), and waits on a
Unix socket. `kubeipvs-lab-python` (modclient/), the nodes' Python interpreter in molecule's
inventory, hands it its standard input, output and error, environment, working directory and
umask; the server forks, and the child runs the payload read from that standard input as
`python3` would run a program read from its standard input: a new session, `sys.argv == ['']`,
a fresh `__main__`, atexit handlers, exit status and signal passed back. Any other use of the
interpreter (arguments given, no server) runs /usr/bin/python3 itself.

Packages the server loaded keep their folder; modules a payload brings that the server did not
load come from the payload's zip first, as in a plain run (PayloadFirst). The payload's own
modules - the collection's - always come from its zip.

usage: modserver.py PRELOAD_DIR SOCKET
"""

import array
import atexit
import builtins
import contextlib
import json
import os
import selectors
import signal
import socket
import struct
import sys
import traceback
import types
import zipimport

# What payloads import besides ansible-core's module_utils: loaded once here, not in every task.
STDLIB = (
    "base64", "contextlib", "copy", "datetime", "errno", "gzip", "hashlib", "heapq", "ipaddress",
    "json", "resource", "secrets", "shlex", "shutil", "subprocess", "tempfile", "zipfile",
)
MODULE_UTILS = (
    "ansible.module_utils.basic",
    "ansible.module_utils._internal._ansiballz._loader",
    "ansible.module_utils.common.arg_spec",
    "ansible.module_utils.common.validation",
)
HEADER = struct.Struct("!I")


def preload(folder):
    """Imports the module_utils and the standard modules; the names of the ansible packages loaded."""
    import importlib

    sys.path.insert(0, folder)
    for name in STDLIB + MODULE_UTILS:
        importlib.import_module(name)
    sys.path.remove(folder)
    return frozenset(name for name, module in sys.modules.items()
                     if (name == "ansible" or name.startswith("ansible.")) and hasattr(module, "__path__"))


class PayloadFirst:
    """A submodule of a package the server loaded is looked for in the payload's zip first."""

    def __init__(self, packages):
        self.packages = packages

    def find_spec(self, fullname, path=None, target=None):
        parent = fullname.rpartition(".")[0]
        if parent not in self.packages:
            return None
        inside = parent.replace(".", "/") + "/"
        for entry in sys.path:
            if isinstance(entry, str) and entry.endswith(".zip"):
                try:
                    spec = zipimport.zipimporter(os.path.join(entry, inside)).find_spec(fullname, target)
                except (zipimport.ZipImportError, OSError):
                    continue
                if spec is not None:
                    return spec
        return None


def exit_status(code):
    """What the interpreter exits with for SystemExit(code)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    with contextlib.suppress(Exception):
        print(code, file=sys.stderr)
    return 1


def run_payload(request, fds, packages):
    """In the forked child: become the interpreter the client stands for, run the program on stdin."""
    os.setsid()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    for number in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(number, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ.clear()
    os.environ.update(dict(item.split("=", 1) for item in request["env"] if "=" in item))
    with contextlib.suppress(OSError):
        os.chdir(request["cwd"])
    os.umask(request["umask"])
    sys.argv = [""]
    sys.path[0] = ""
    sys.meta_path.insert(0, PayloadFirst(packages))
    main = types.ModuleType("__main__")
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    atexit._clear()  # pylint: disable=protected-access
    status = 0
    try:
        exec(compile(sys.stdin.buffer.read(), "<stdin>", "exec"), main.__dict__)  # pylint: disable=exec-used
    except SystemExit as stop:
        status = exit_status(stop.code)
    except BaseException:  # pylint: disable=broad-except
        traceback.print_exc()
        status = 1
    atexit._run_exitfuncs()  # pylint: disable=protected-access
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


def receive(connection):
    """The client's request and its three file descriptors."""
    fds = array.array("i")
    data, ancillary, _flags, _address = connection.recvmsg(65536, socket.CMSG_SPACE(3 * fds.itemsize))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    if len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise ValueError(f"3 file descriptors expected, {len(fds)} came")
    while len(data) < HEADER.size or len(data) < HEADER.size + HEADER.unpack_from(data)[0]:
        more = connection.recv(65536)
        if not more:
            raise ValueError("the request ended early")
        data += more
    return json.loads(data[HEADER.size:HEADER.size + HEADER.unpack_from(data)[0]]), list(fds)


def serve(folder, path):
    packages = preload(folder)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(64)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)
    children = {}  # pid -> the client's connection, told the exit status when the child ends
    while True:
        for key, _events in selector.select():
            if key.fileobj is listener:
                connection, _address = listener.accept()
                connection.settimeout(10)
                try:
                    request, fds = receive(connection)
                except (OSError, ValueError) as error:
                    print(f"modserver: a request failed: {error}", file=sys.stderr, flush=True)
                    connection.close()
                    continue
                pid = os.fork()
                if pid == 0:
                    selector.close()
                    listener.close()
                    connection.close()
                    signal.set_wakeup_fd(-1)
                    os.close(wake_read)
                    os.close(wake_write)
                    run_payload(request, fds, packages)
                for fd in fds:
                    os.close(fd)
                children[pid] = connection
                with contextlib.suppress(OSError):
                    connection.sendall(b"%d\n" % pid)
            else:
                os.read(wake_read, 4096)
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            connection = children.pop(pid, None)
            if connection is not None:
                with contextlib.suppress(OSError):
                    connection.sendall(b"%d\n" % os.waitstatus_to_exitcode(status))
                connection.close()


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
