"""The local lab: Debian VMs with a stock kernel (IPVS, dummy links, ipsets) booted under QEMU.

Commands:
  build              build the guest image if the cache has none for the current recipe
  up [--nodes N]     boot N nodes (default 1) on copy-on-write overlays, wait for SSH, write the inventory
  down               stop every lab VM by the PID QEMU recorded, remove the overlays
  status             list the nodes and whether their QEMU is alive
  ssh [NODE] [CMD]   open a root shell (or run CMD) on a node (default node1)
  reboot NODE        shut a node down from inside, boot it again, wait until its new boot answers SSH
  wheels             download the Python wheels of tests/lab/node-requirements.txt (the IPVS benchmark's
                     pyroute2 reference) into the cache: the nodes cannot reach the index

Environment:
  KUBEIPVS_LAB_CACHE   image, key and wheel cache (default ~/.cache/kubeipvs-lab)
  KUBEIPVS_LAB_STATE   per-run state: PID files, overlays, consoles, inventory (default <repo>/.lab)
  KUBEIPVS_LAB_MIRROR  Debian archive to build from (default: the one apt on this machine uses)
  KUBEIPVS_LAB_MEMORY  MiB of RAM per node (default 1536)
  KUBEIPVS_LAB_CPU     QEMU CPU model of the nodes (default max)
  KUBEIPVS_LAB_SMP     virtual CPUs per node (default 2)
  KUBEIPVS_LAB_ZIPCACHE  1: install tests/lab/zipcache.py on each node `up` boots (molecule's runs; it
                       halves a module task's time on a TCG node, so benchmarks and the demo leave it out)
  KUBEIPVS_LAB_MODSERVER  a Python with ansible-core (molecule's: the virtualenv's): install
                       tests/lab/modserver.py with that ansible-core's module_utils on each node `up`
                       boots, and make its client the nodes' interpreter in the inventory (molecule's
                       runs only, as the cache above; it needs Go to build the client)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
RECIPE = HERE / "build-image.sh"
NODE_REQUIREMENTS = HERE / "node-requirements.txt"
ZIPCACHE = HERE / "zipcache.py"
MODSERVER = HERE / "modserver.py"
MODCLIENT = HERE / "modclient"
NODE_PYTHON = "/usr/bin/python3"
MODSERVER_PYTHON = "/usr/local/bin/kubeipvs-lab-python"  # modclient's path on a node
QEMU_NAME_PREFIX = "kubeipvs-lab-"
SSH_OPTIONS = [
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR",
    "-o", "BatchMode=yes",
]
BOOT_TIMEOUT = float(os.environ.get("KUBEIPVS_LAB_BOOT_TIMEOUT", "420"))


class LabError(Exception):
    """A lab step failed; the message says which and why."""


def log(message: str) -> None:
    print(f"lab: {message}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "kubeipvs-lab"
    path = Path(os.environ.get("KUBEIPVS_LAB_CACHE", default))
    path.mkdir(parents=True, exist_ok=True)
    return path


def state_dir() -> Path:
    path = Path(os.environ.get("KUBEIPVS_LAB_STATE", REPO / ".lab"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def debian_mirror() -> str:
    """The Debian archive apt on this machine is configured with (deb822 or one-line format)."""
    if os.environ.get("KUBEIPVS_LAB_MIRROR"):
        return os.environ["KUBEIPVS_LAB_MIRROR"]
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        for stanza in path.read_text().split("\n\n"):
            fields = dict(
                line.split(":", 1) for line in stanza.splitlines() if ":" in line and not line.startswith("#")
            )
            suites = fields.get("Suites", "").split()
            if "bookworm" in suites and "main" in fields.get("Components", "").split():
                return fields["URIs"].split()[0]
    for path in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*.list")]:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            match = re.match(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s+.*\bmain\b", line)
            if match:
                return match.group(1)
    raise LabError("no Debian bookworm archive in apt's sources; set KUBEIPVS_LAB_MIRROR")


def ssh_key() -> Path:
    key = cache_dir() / "id_ed25519"
    if not key.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kubeipvs-lab", "-f", str(key)], check=True
        )
    return key


def image_dir() -> Path:
    """Where the image for the current recipe and key lives: a change to either rebuilds it."""
    digest = hashlib.sha256(RECIPE.read_bytes())
    digest.update(ssh_key().with_suffix(".pub").read_bytes())
    return cache_dir() / "images" / digest.hexdigest()[:16]


@contextlib.contextmanager
def locked(path: Path):
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def build() -> Path:
    target = image_dir()
    with locked(cache_dir() / "build.lock"):
        if (target / "rootfs.img").exists():
            return target
        for tool in ("debootstrap", "mkfs.ext4", "qemu-img", "qemu-system-x86_64"):
            if not shutil.which(tool):
                raise LabError(f"{tool} is missing: run 'make setup' first")
        if os.geteuid() != 0:
            raise LabError("building the image needs root (debootstrap)")
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        started = time.monotonic()
        log(f"building the guest image {target.name} (about 3 minutes, cached afterwards)")
        subprocess.run(
            ["bash", str(RECIPE), debian_mirror(), str(ssh_key().with_suffix(".pub")), str(staging)], check=True
        )
        staging.rename(target)
        kernel = (target / "kernel-release").read_text().strip()
        log(f"image built in {time.monotonic() - started:.0f}s; kernel {kernel}")
        prune_images(keep=target)
    return target


def prune_images(keep: Path, spare: int = 1) -> None:
    """Drop images of older recipes, but not the newest ``spare`` others: another checkout (a branch
    with another recipe) may be booting from one right now."""
    others = sorted(
        (path for path in (cache_dir() / "images").iterdir() if path != keep and not path.name.endswith(".partial")),
        key=lambda path: path.stat().st_mtime, reverse=True,
    )
    for old in others[spare:]:
        shutil.rmtree(old, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_names(count: int) -> list[str]:
    return [f"node{i}" for i in range(1, count + 1)]


def qemu_pid(node_dir: Path) -> int | None:
    """The PID of this node's QEMU if it is still running (checked by its -name, never by PID alone)."""
    pidfile = node_dir / "qemu.pid"
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if f"{QEMU_NAME_PREFIX}{node_dir.name}".encode() in cmdline else None


def boot(name: str, image: Path) -> dict:
    node_dir = state_dir() / name
    if qemu_pid(node_dir):
        return json.loads((node_dir / "node.json").read_text())
    shutil.rmtree(node_dir, ignore_errors=True)
    node_dir.mkdir(parents=True)
    overlay = node_dir / "disk.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(image / "rootfs.img"), str(overlay)],
        check=True,
    )
    port = free_port()
    index = int(name.removeprefix("node"))
    memory = os.environ.get("KUBEIPVS_LAB_MEMORY", "1536")
    cpu = os.environ.get("KUBEIPVS_LAB_CPU", "max")
    smp = os.environ.get("KUBEIPVS_LAB_SMP", "2")
    command = [
        "qemu-system-x86_64",
        "-name", f"{QEMU_NAME_PREFIX}{name},process={QEMU_NAME_PREFIX}{name}",
        "-accel", "tcg,thread=multi", "-cpu", cpu, "-smp", smp, "-m", memory,
        "-nodefaults", "-no-user-config", "-display", "none",
        "-kernel", str(image / "vmlinuz"), "-initrd", str(image / "initrd.img"),
        "-append", f"root=/dev/vda rw console=ttyS0 net.ifnames=0 mitigations=off systemd.hostname={name} "
                   f"kubeipvs.node={index}",
        "-drive", f"file={overlay},if=virtio,format=qcow2,cache=unsafe",
        # eth0: QEMU's user-mode network (SSH forward, the controller at 10.0.2.2, Debian's archive)
        "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", "virtio-net-pci,netdev=net0",
        # eth1: the lab network between the nodes, on the lab's own switch
        "-netdev", f"vde,id=lan,sock={switch_socket()}",
        "-device", f"virtio-net-pci,netdev=lan,mac=52:54:00:c8:00:{index:02x}",
        # the Kubernetes binaries the controller built, read-only: the nodes' image store
        "-virtfs", f"local,path={k8s_cache()},mount_tag=kubeipvs-k8s,security_model=none,readonly=on",
        "-device", "virtio-rng-pci",
        "-serial", f"file:{node_dir / 'console.log'}",
        "-pidfile", str(node_dir / "qemu.pid"),
        "-daemonize",
    ]
    node = {"name": name, "host": "127.0.0.1", "port": port, "argv": command}
    return launch(node)


def launch(node: dict) -> dict:
    """Start the node's QEMU from its command line (its disk as the last run left it)."""
    node_dir = state_dir() / node["name"]
    subprocess.run(node["argv"], check=True)
    node["pid"] = qemu_pid(node_dir)
    (node_dir / "node.json").write_text(json.dumps(node))
    log(f"{node['name']}: QEMU pid {node['pid']}, ssh on 127.0.0.1:{node['port']}")
    return node


def k8s_cache() -> Path:
    path = cache_dir() / "k8s"
    path.mkdir(parents=True, exist_ok=True)
    return path


def switch_socket() -> Path:
    return state_dir() / "switch"


def switch_pid() -> int | None:
    """The PID of this lab's network switch if it runs (checked by its socket path on its command line)."""
    try:
        pid = int((state_dir() / "switch.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if str(switch_socket()).encode() in cmdline else None


def start_switch() -> None:
    """The lab network's switch: a user-space Ethernet switch the nodes' second NICs plug into."""
    if switch_pid():
        return
    if not shutil.which("vde_switch"):
        raise LabError("vde_switch is missing: run 'make setup' first")
    shutil.rmtree(switch_socket(), ignore_errors=True)
    (state_dir() / "switch.pid").unlink(missing_ok=True)
    subprocess.run(["vde_switch", "--sock", str(switch_socket()), "--daemon",
                    "--pidfile", str(state_dir() / "switch.pid")], check=True)
    deadline = time.monotonic() + 10
    while not switch_pid() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not switch_pid():
        raise LabError("the lab network's switch did not start")


def stop_switch() -> None:
    pid = switch_pid()
    if pid:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while switch_pid() and time.monotonic() < deadline:
            time.sleep(0.05)
        if switch_pid():
            os.kill(pid, signal.SIGKILL)
    (state_dir() / "switch.pid").unlink(missing_ok=True)
    shutil.rmtree(switch_socket(), ignore_errors=True)


def ssh_command(node: dict, *remote: str, options: tuple[str, ...] = ()) -> list[str]:
    return [
        "ssh", *SSH_OPTIONS, *options, "-i", str(ssh_key()), "-p", str(node["port"]), f"root@{node['host']}", *remote
    ]


# What the guest's console prints once its network answers: sshd started, or getty's login prompt,
# whichever comes first.
SSHD_STARTED = re.compile(rb"Started .*ssh\.service|login: ")


def wait_for_console(node: dict, pattern: re.Pattern, deadline: float, what: str) -> None:
    """Until the node's console shows ``pattern``. The console, not SSH probes: QEMU's user-mode
    network accepts the host side of a connection at once and keeps it (CLOSE-WAIT) for a guest that
    cannot answer yet, and a reboot with such a connection open was slower (87 s to sshd, against
    50 s with none)."""
    node_dir = state_dir() / node["name"]
    while time.monotonic() < deadline:
        if not qemu_pid(node_dir):
            raise LabError(f"{node['name']}: QEMU exited during boot; console:\n{console_tail(node_dir)}")
        try:
            if pattern.search((node_dir / "console.log").read_bytes()):
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise LabError(f"{node['name']}: {what} not seen after {BOOT_TIMEOUT:.0f}s; console:\n{console_tail(node_dir)}")


def wait_for_ssh(node: dict) -> None:
    """Until the node answers SSH: first its console says its network is up, then a login succeeds."""
    deadline = time.monotonic() + BOOT_TIMEOUT
    node_dir = state_dir() / node["name"]
    wait_for_console(node, SSHD_STARTED, deadline, "sshd's start or a login prompt")
    while time.monotonic() < deadline:
        if not qemu_pid(node_dir):
            raise LabError(f"{node['name']}: QEMU exited during boot; console:\n{console_tail(node_dir)}")
        try:
            probe = subprocess.run(
                ssh_command(node, "true", options=("-o", "ConnectTimeout=10")),
                capture_output=True, timeout=60, check=False,
            )
        except subprocess.TimeoutExpired:
            continue  # sshd accepted but did not finish the handshake yet (a loaded host): try again
        if probe.returncode == 0:
            return
        time.sleep(1)
    raise LabError(f"{node['name']}: no SSH after {BOOT_TIMEOUT:.0f}s; console:\n{console_tail(node_dir)}")


def reboot(name: str) -> None:
    """Shut the node down from inside (systemd's whole shutdown: units stopped, disks synced, power
    off), boot it again from the same disk, and wait for the new boot's SSH. QEMU is started afresh
    rather than reset: under TCG a guest's warm reset makes its next boot two to four times slower
    (its kernel alone, measured on the console: initramfs unpacked after 10-60 s instead of 4 s),
    while what a boot applies - modules-load.d, sysctl.d, modprobe.d, enabled units - is the same.
    The power-off starts two seconds after the SSH session that asks for it has closed, and nothing
    connects until the new boot's network is up (see ``wait_for_console``). Callers close their own
    persistent connections to the node first (Ansible: ``meta: reset_connection``). The console of
    each earlier boot is kept as ``console-N.log``."""
    node = next((node for node in running_nodes() if node["name"] == name), None)
    if node is None:
        raise LabError(f"{name} is not running; 'make lab-up' first")
    if "argv" not in node:
        raise LabError(f"{name} was booted by an older lab.py: 'make lab-down' and boot it again")
    node_dir = state_dir() / name
    started = time.monotonic()
    asked = subprocess.run(ssh_command(node, "systemd-run --quiet --on-active=2 /bin/systemctl poweroff"),
                           capture_output=True, timeout=60, check=False)
    if asked.returncode != 0:
        raise LabError(f"{name}: the power-off was refused: {asked.stderr.decode(errors='replace').strip()}")
    deadline = time.monotonic() + BOOT_TIMEOUT
    while qemu_pid(node_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    if qemu_pid(node_dir):
        raise LabError(f"{name}: still running {BOOT_TIMEOUT:.0f}s after its power-off; "
                       f"console:\n{console_tail(node_dir)}")
    down_after = time.monotonic() - started
    earlier = len(list(node_dir.glob("console-*.log")))
    (node_dir / "console.log").rename(node_dir / f"console-{earlier + 1}.log")
    wait_for_ssh(launch(node))
    log(f"{name}: shut down in {down_after:.0f}s, SSH answers again after {time.monotonic() - started:.0f}s")


def install_zipcache(node: dict) -> None:
    """Python's site directory on the node gets zipcache.py and a .pth that imports it at start."""
    script = (
        'set -e; dir=$(python3 -c "import site; print(site.getsitepackages()[0])"); mkdir -p "$dir"; '
        'cat > "$dir/kubeipvs_lab_zipcache.py"; echo import kubeipvs_lab_zipcache > "$dir/kubeipvs-lab-zipcache.pth"'
    )
    with ZIPCACHE.open("rb") as source:
        installed = subprocess.run(ssh_command(node, script), stdin=source, capture_output=True, timeout=120, check=False)
    if installed.returncode != 0:
        raise LabError(f"{node['name']}: installing the zip bytecode cache failed: {installed.stderr.decode(errors='replace')}")


def modclient() -> Path:
    """modclient/ built for the nodes (static, linux/amd64), cached by its sources' hash."""
    sources = sorted(p for p in MODCLIENT.iterdir() if p.suffix in (".go", ".mod"))
    digest = hashlib.sha256(b"".join(p.name.encode() + b"\0" + p.read_bytes() for p in sources)).hexdigest()[:16]
    binary = cache_dir() / "modclient" / digest / "kubeipvs-lab-python"
    if not binary.exists():
        if not shutil.which("go"):
            raise LabError("KUBEIPVS_LAB_MODSERVER needs Go to build tests/lab/modclient")
        partial = binary.with_name(f"{binary.name}.{os.getpid()}")
        partial.parent.mkdir(parents=True, exist_ok=True)
        environment = {**os.environ, "CGO_ENABLED": "0", "GOOS": "linux", "GOARCH": "amd64"}
        built = subprocess.run(["go", "build", "-trimpath", "-ldflags=-s", "-o", str(partial), "."], cwd=MODCLIENT,
                               env=environment, capture_output=True, text=True, timeout=600, check=False)
        if built.returncode != 0:
            raise LabError(f"building tests/lab/modclient failed: {built.stderr}")
        partial.rename(binary)
    return binary


def modserver_bundle(python: str) -> bytes:
    """A gzipped tar of what a node's module server needs: the ansible-core module_utils of ``python``
    (the controller's), with the package __init__ files a payload's zip carries, the server, the
    client and the server's systemd unit."""
    found = subprocess.run([python, "-c", "import ansible, ansible.release; print(ansible.__path__[0]); "
                            "print(ansible.release.__version__)"], capture_output=True, text=True, check=False)
    if found.returncode != 0:
        raise LabError(f"KUBEIPVS_LAB_MODSERVER={python}: no ansible-core there: {found.stderr.strip()}")
    package, version = found.stdout.split()
    extend = "from pkgutil import extend_path\n__path__=extend_path(__path__,__name__)\n"
    unit = (
        "[Unit]\nDescription=Ansible module payloads forked from a Python with ansible-core's module_utils"
        " loaded (molecule's lab)\n\n[Service]\nEnvironment=LANG=C.UTF-8\n"
        "ExecStart=/usr/bin/python3 /usr/local/lib/kubeipvs-lab/modserver.py /usr/local/lib/kubeipvs-lab/preload"
        " /run/kubeipvs-lab-modserver.sock\nKillMode=process\nRestart=on-failure\n\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )
    buffer = io.BytesIO()
    # No time in the gzip header: the same files give the same bundle, which a node already running
    # it is not given again.
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as packed, tarfile.open(fileobj=packed, mode="w") as bundle:
        def add_text(name: str, text: str, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            data = text.encode()
            info.size, info.mode = len(data), mode
            bundle.addfile(info, io.BytesIO(data))

        bundle.add(Path(package) / "module_utils", "preload/ansible/module_utils",
                   filter=lambda info: None if "__pycache__" in info.name else info)
        add_text("preload/ansible/__init__.py", f'{extend}__version__="{version}"\n__author__="Ansible, Inc."\n')
        add_text("preload/ansible/module_utils/__init__.py", extend)
        bundle.add(MODSERVER, "modserver.py")
        bundle.add(modclient(), "kubeipvs-lab-python")
        add_text("kubeipvs-lab-modserver.service", unit)
    return buffer.getvalue()


def install_modserver(node: dict, bundle: bytes) -> None:
    """The module server on the node, enabled for every boot, unless the same bundle runs there."""
    digest = hashlib.sha256(bundle).hexdigest()
    script = (
        "set -e; dir=/usr/local/lib/kubeipvs-lab; sock=/run/kubeipvs-lab-modserver.sock; "
        f'if [ "$(cat $dir/bundle.sha256 2>/dev/null)" = {digest} ] && [ -S $sock ]; then cat >/dev/null; exit 0; fi; '
        "rm -rf $dir.new && mkdir -p $dir.new && tar -xzf - -C $dir.new && rm -rf $dir && mv $dir.new $dir; "
        f"install -m 755 $dir/kubeipvs-lab-python {MODSERVER_PYTHON}; "
        "mv $dir/kubeipvs-lab-modserver.service /etc/systemd/system/; systemctl daemon-reload; "
        "systemctl enable -q kubeipvs-lab-modserver.service; systemctl restart kubeipvs-lab-modserver.service; "
        "for _ in $(seq 1 120); do [ -S $sock ] && break; sleep 0.5; done; "
        f"[ -S $sock ]; echo {digest} > $dir/bundle.sha256"
    )
    installed = subprocess.run(ssh_command(node, script), input=bundle, capture_output=True, timeout=300, check=False)
    if installed.returncode != 0:
        failure = installed.stderr.decode(errors="replace")
        raise LabError(f"{node['name']}: installing the module server failed: {failure}")
    node["python"] = MODSERVER_PYTHON
    (state_dir() / node["name"] / "node.json").write_text(json.dumps(node))


def console_tail(node_dir: Path, lines: int = 30) -> str:
    try:
        return "\n".join((node_dir / "console.log").read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no console log)"


def write_inventory(nodes: list[dict]) -> Path:
    """An Ansible inventory (YAML is a JSON superset, so JSON is written) for the running nodes."""
    inventory = {
        "all": {
            "children": {
                "lab": {
                    "hosts": {
                        node["name"]: {
                            "ansible_host": node["host"],
                            "ansible_port": node["port"],
                            "ansible_python_interpreter": node.get("python", NODE_PYTHON),
                        }
                        for node in nodes
                    }
                }
            },
            "vars": {
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(ssh_key()),
                "ansible_ssh_common_args": " ".join(SSH_OPTIONS[:6]),
                "ansible_pipelining": True,
            },
        }
    }
    path = state_dir() / "inventory.yml"
    path.write_text(json.dumps(inventory, indent=2) + "\n")
    return path


def running_nodes() -> list[dict]:
    nodes = []
    for node_dir in sorted(state_dir().glob("node*")):
        if qemu_pid(node_dir) and (node_dir / "node.json").exists():
            nodes.append(json.loads((node_dir / "node.json").read_text()))
    return nodes


def up(count: int) -> None:
    image = build()
    started = time.monotonic()
    start_switch()
    nodes = [boot(name, image) for name in node_names(count)]
    with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
        for future in [pool.submit(wait_for_ssh, node) for node in nodes]:
            future.result()
    if os.environ.get("KUBEIPVS_LAB_ZIPCACHE") == "1":
        for node in nodes:
            install_zipcache(node)
    if os.environ.get("KUBEIPVS_LAB_MODSERVER"):
        bundle = modserver_bundle(os.environ["KUBEIPVS_LAB_MODSERVER"])
        with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
            for future in [pool.submit(install_modserver, node, bundle) for node in nodes]:
                future.result()
    path = write_inventory(running_nodes())
    log(f"{count} node(s) answer SSH after {time.monotonic() - started:.0f}s; inventory: {path}")


def down() -> None:
    stopped = 0
    for node_dir in sorted(state_dir().glob("node*")):
        pid = qemu_pid(node_dir)
        if pid:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while qemu_pid(node_dir) and time.monotonic() < deadline:
                time.sleep(0.1)
            if qemu_pid(node_dir):
                os.kill(pid, signal.SIGKILL)
            stopped += 1
        shutil.rmtree(node_dir, ignore_errors=True)
    stop_switch()
    (state_dir() / "inventory.yml").unlink(missing_ok=True)
    log(f"stopped {stopped} VM(s)")


def wheels() -> Path:
    """Pure-Python wheels for the nodes, fetched by the controller: guests cannot verify TLS to the index."""
    target = cache_dir() / "wheels"
    stamp = target / ".requirements"
    wanted = NODE_REQUIREMENTS.read_text()
    if stamp.exists() and stamp.read_text() == wanted:
        return target
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--no-deps",
         "--python-version", "3.11", "-d", str(target), "-r", str(NODE_REQUIREMENTS)],
        check=True,
    )
    stamp.write_text(wanted)
    return target


def status() -> None:
    for node_dir in sorted(state_dir().glob("node*")):
        node = json.loads((node_dir / "node.json").read_text()) if (node_dir / "node.json").exists() else {}
        state = "running" if qemu_pid(node_dir) else "stopped"
        print(f"{node_dir.name}\t{state}\tssh 127.0.0.1:{node.get('port', '?')}")


def ssh(name: str, remote: list[str]) -> None:
    for node in running_nodes():
        if node["name"] == name:
            os.execvp("ssh", ssh_command(node, *remote))
    raise LabError(f"{name} is not running; 'make lab-up' first")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build")
    up_parser = sub.add_parser("up")
    up_parser.add_argument("--nodes", type=int, default=int(os.environ.get("KUBEIPVS_LAB_NODES", "1")))
    sub.add_parser("down")
    sub.add_parser("status")
    sub.add_parser("wheels")
    ssh_parser = sub.add_parser("ssh")
    ssh_parser.add_argument("node", nargs="?", default="node1")
    ssh_parser.add_argument("remote", nargs=argparse.REMAINDER)
    reboot_parser = sub.add_parser("reboot")
    reboot_parser.add_argument("node")
    args = parser.parse_args()
    try:
        if args.command == "build":
            print(build())
        elif args.command == "up":
            up(args.nodes)
        elif args.command == "down":
            down()
        elif args.command == "status":
            status()
        elif args.command == "wheels":
            print(wheels())
        elif args.command == "ssh":
            ssh(args.node, args.remote)
        elif args.command == "reboot":
            reboot(args.node)
    except (LabError, subprocess.CalledProcessError) as error:
        log(f"error: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
