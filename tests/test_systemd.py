"""systemd/cartd.service under a real systemd (252 on Debian 12), booted as PID 1 of
namespaces of its own ("the box"): start and READY, STATUS with the last cycle, signed
deliveries, `systemctl reload` with a valid and a broken file, `cartd ctl status` while
the file is broken, the hardening in force, the watchdog killing a stopped process, stop.

The box needs root: new PID, mount, UTS, IPC and cgroup namespaces; a root that is an
overlay of the host's / with a tmpfs upper layer (whatever the box writes vanishes with
it); its own cgroup2 subtree `cartd-test-<id>`; an empty /etc/systemd/system; the host's
network (the receiver and PostgreSQL stay outside). The unit, the sysusers file and the
example config are installed as README "Running as a systemd service" says; instead of
`pip install .` the box runs this checkout with this test environment's packages
(bound read-only under /opt/cartd-test) on Debian's /usr/bin/python3, to stay fast.
Skipped, with the reason, where such a box cannot be made.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import aiohttp
import pytest

from cartd.signing import Signer
from harness import ROOT, SECRET, add_agents, free_port, scripted_receiver, wait_until

SYSTEMD = "/usr/lib/systemd/systemd"
TOOLS = ("unshare", "nsenter", "setpriv", "mount", "umount", "pivot_root", "systemd-id128")
BOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SITE = "/opt/cartd-test/site"  # this test environment's packages, inside the box
SOURCE = "/opt/cartd-test/src"  # this checkout, inside the box
PG_DIR = "/run/cartd-test-pg"  # the test PostgreSQL's Unix socket, inside the box
# What the test changes in the unit, as an operator would, in a drop-in: a short watchdog
# so that it fires within the test, and short waits after it fires. (A process stopped by
# SIGSTOP cannot die of the watchdog's SIGABRT: systemd sends SIGKILL TimeoutAbortSec=
# later.)
DROP_IN = "[Service]\nWatchdogSec=3s\nTimeoutAbortSec=1s\nRestartSec=1s\n"

STAGE_ONE = """#!/bin/bash
# PID 1 of the new PID and mount namespaces: into the box's cgroup, then a cgroup
# namespace rooted there, so that the cgroup2 mounted below shows the box's subtree only.
set -euo pipefail
echo 0 > "$BOX_CG/payload/cgroup.procs"
exec unshare --cgroup "$BOX_DIR/stage2.sh"
"""

STAGE_TWO = """#!/bin/bash
# Build the box's root, then become its systemd.
set -euo pipefail
B=$BOX_DIR R=$BOX_DIR/root
CONSOLE=$(tty)
mount --make-rprivate /
mkdir -p "$B/layer" "$R"
mount -t tmpfs -o mode=0755,size=2g boxlayer "$B/layer"
mkdir -p "$B/layer/upper" "$B/layer/work"
mount -t overlay boxroot -o "lowerdir=/,upperdir=$B/layer/upper,workdir=$B/layer/work" "$R"
mount -t proc proc "$R/proc"
mount --bind "$R/proc/sys" "$R/proc/sys"; mount -o remount,bind,ro "$R/proc/sys"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup"
mount -t tmpfs -o mode=0755,nosuid,size=64m boxdev "$R/dev"
for d in null zero full random urandom tty; do touch "$R/dev/$d"; mount --bind "/dev/$d" "$R/dev/$d"; done
touch "$R/dev/console"; mount --bind "$CONSOLE" "$R/dev/console"
mkdir -p "$R/dev/pts" "$R/dev/shm" "$R/dev/mqueue"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"; ln -s /proc/self/fd "$R/dev/fd"
ln -s /proc/self/fd/0 "$R/dev/stdin"; ln -s /proc/self/fd/1 "$R/dev/stdout"
ln -s /proc/self/fd/2 "$R/dev/stderr"
mount -t tmpfs -o mode=1777,nosuid,nodev boxshm "$R/dev/shm"
mount -t tmpfs -o mode=0755,nosuid,nodev,size=64m boxrun "$R/run"
mount -t tmpfs -o mode=1777,nosuid,nodev boxtmp "$R/tmp"
mkdir -p "$R$SOURCE" "$R$SITE"
mount --bind -o ro "$CARTD_SOURCE" "$R$SOURCE"
mount --bind -o ro "$CARTD_SITE" "$R$SITE"
if [ -n "$PG_SOCKET" ]; then  # the socket alone: its directory may be closed to others
  mkdir -p "$R$PG_DIR"; touch "$R$PG_DIR/${PG_SOCKET##*/}"
  mount --bind "$PG_SOCKET" "$R$PG_DIR/${PG_SOCKET##*/}"
fi
rm -rf "$R/etc/systemd/system"; mkdir -p "$R/etc/systemd/system"
printf '[Unit]\\nRequires=basic.target\\nAfter=basic.target\\nAllowIsolate=yes\\n' \\
  > "$R/etc/systemd/system/cartd-test.target"
ln -s cartd-test.target "$R/etc/systemd/system/default.target"
: > "$R/etc/fstab"
systemd-id128 new > "$R/etc/machine-id"
echo cartd-test > "$R/etc/hostname"; hostname cartd-test
cd "$R"; mkdir -p oldroot; pivot_root . oldroot; cd /
umount -l /oldroot; rmdir /oldroot
mount --make-rshared /  # else LoadCredential= gives an empty /run/credentials/<unit>/
exec setpriv --bounding-set -sys_module,-sys_time,-sys_boot,-sys_rawio,-wake_alarm,-block_suspend,-syslog,-mac_admin,-mac_override \\
  env -i container=cartd-test PATH=$BOX_PATH /lib/systemd/systemd --show-status=no
"""

# /opt/cartd/bin/cartd as `pip install .` into /opt/cartd would make it, on /usr/bin/python3.
LAUNCHER = f"""#!/usr/bin/python3
import sys
sys.path[:0] = ["{SOURCE}", "{SITE}"]
from cartd.cli import main
sys.exit(main())
"""


def _cgroup2() -> Path | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split(" ")[0] == "cgroup2":
            return Path(left.split(" ")[4])
    return None


def _cannot_make_a_box() -> str | None:
    """Why this machine cannot run the box, or None."""
    if os.geteuid() != 0:
        return "needs root (it boots systemd in namespaces of its own)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)} (Debian packages util-linux, systemd)"
    if not os.access(SYSTEMD, os.X_OK):
        return f"{SYSTEMD} is not installed (Debian package systemd)"
    if _cgroup2() is None:
        return "no cgroup2 hierarchy is mounted"
    system_python = subprocess.run(["/usr/bin/python3", "-c", "import sys; print(sys.version_info[:2])"],
                                   capture_output=True, text=True).stdout.strip()
    if system_python != str(sys.version_info[:2]):
        return (f"the box runs cartd on /usr/bin/python3 {system_python} with this environment's"
                f" packages, built for Python {sys.version_info[:2]}")
    with tempfile.TemporaryDirectory(prefix="cartd-test-probe-", dir="/tmp") as probe:
        trial = subprocess.run(
            ["unshare", "--fork", "--pid", "--mount", "--cgroup", "sh", "-c",
             'mount -t tmpfs probe "$1" && mkdir "$1/u" "$1/w" "$1/m" && mount -t overlay probe'
             ' -o "lowerdir=/,upperdir=$1/u,workdir=$1/w" "$1/m"', "_", probe],
            capture_output=True, text=True, timeout=30)
    if trial.returncode:
        return f"cannot make namespaces with an overlayfs root: {trial.stderr.strip()[-200:]}"
    return None


pytestmark = pytest.mark.skipif(_cannot_make_a_box() is not None,
                                reason=str(_cannot_make_a_box()))


def _die_with_parent() -> None:
    """In the launcher, before exec: SIGKILL when pytest dies (unshare --kill-child then
    takes the box down with it)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Box:
    """systemd as PID 1 of its own namespaces; `run` executes a shell line inside."""

    def __init__(self, pg_socket: str | None) -> None:
        self.name = f"cartd-test-{uuid.uuid4().hex[:8]}"
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir="/tmp"))
        self.cgroup = _cgroup2() / self.name
        self.pg_socket = pg_socket or ""
        self.pid: int | None = None
        self.launcher: subprocess.Popen | None = None
        self.console = bytearray()
        self._pty = -1
        self._reader: threading.Thread | None = None

    def boot(self) -> None:
        for name, text in (("stage1.sh", STAGE_ONE), ("stage2.sh", STAGE_TWO)):
            (self.dir / name).write_text(text)
            (self.dir / name).chmod(0o755)
        (self.cgroup / "supervisor").mkdir(parents=True)
        (self.cgroup / "payload").mkdir()
        self._pty, console = os.openpty()  # the box's /dev/console
        self._reader = threading.Thread(target=self._read_console, daemon=True)
        self._reader.start()
        env = {"PATH": BOX_PATH, "BOX_DIR": str(self.dir), "BOX_CG": str(self.cgroup),
               "BOX_PATH": BOX_PATH, "SOURCE": SOURCE, "SITE": SITE, "PG_DIR": PG_DIR,
               "CARTD_SOURCE": str(ROOT), "CARTD_SITE": sysconfig.get_paths()["purelib"],
               "PG_SOCKET": self.pg_socket}
        self.launcher = subprocess.Popen(
            ["sh", "-c", 'echo $$ > "$BOX_CG/supervisor/cgroup.procs" && exec unshare --fork'
             ' --kill-child --pid --mount --uts --ipc "$BOX_DIR/stage1.sh"'],
            stdin=console, stdout=console, stderr=console, env=env, start_new_session=True,
            preexec_fn=_die_with_parent)
        os.close(console)
        self.pid = self._wait_for_systemd()
        self.run("until test -S /run/systemd/private; do sleep 0.05; done", timeout=20)
        state = self.run("systemctl is-system-running --wait", timeout=60).stdout.strip()
        assert state == "running", f"the box is {state}: {self.console_tail()}"

    def _wait_for_systemd(self) -> int:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.launcher.poll() is None, f"the box did not start: {self.console_tail()}"
            try:
                children = Path(f"/proc/{self.launcher.pid}/task/{self.launcher.pid}/children")
                pid = int(children.read_text().split()[0])
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return pid
            except (OSError, IndexError, ValueError):
                pass
            time.sleep(0.02)
        raise TimeoutError(f"no systemd in the box: {self.console_tail()}")

    def _read_console(self) -> None:
        while True:
            try:
                data = os.read(self._pty, 65536)
            except OSError:
                return
            if not data:
                return
            self.console += data
            del self.console[:-20000]

    def console_tail(self) -> str:
        return self.console[-3000:].decode(errors="replace")

    def path(self, inside: str) -> Path:
        """A path of the box as seen from the host."""
        return Path(f"/proc/{self.pid}/root{inside}")

    def run(self, line: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["nsenter", "-t", str(self.pid), "-a", "env", "-i", f"PATH={BOX_PATH}", "HOME=/root",
             "LANG=C.UTF-8", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0", "bash", "-c", line],
            capture_output=True, text=True, timeout=timeout)

    def prop(self, name: str) -> str:
        return self.run(f"systemctl show cartd -p {name} --value").stdout.strip()

    def close(self) -> None:
        """Power the box off (SIGKILL if it does not), then remove what it left on the
        host: its cgroups and its directory. Safe to call after a failed boot."""
        if self.pid is not None and self._is_ours(self.pid):
            subprocess.run(["nsenter", "-t", str(self.pid), "-a", "systemctl", "poweroff",
                            "--no-block"], capture_output=True, timeout=15)
            if not self._exited(self.pid, 20):
                os.kill(self.pid, signal.SIGKILL)
                self._exited(self.pid, 10)
        if self.launcher is not None and self.launcher.poll() is None:
            try:
                self.launcher.wait(10)
            except subprocess.TimeoutExpired:
                self.launcher.kill()
                self.launcher.wait()
        self._remove_cgroups()
        if self._pty >= 0:
            os.close(self._pty)
        if self._reader is not None:
            self._reader.join(5)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _is_ours(self, pid: int) -> bool:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return False
        return b"container=cartd-test" in environ

    def _exited(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._is_ours(pid):
                return True
            time.sleep(0.05)
        return False

    def _remove_cgroups(self) -> None:
        deadline = time.monotonic() + 10
        while self.cgroup.exists() and time.monotonic() < deadline:
            for folder in sorted(self.cgroup.rglob("*"), key=lambda p: -len(p.parts)):
                if folder.is_dir():
                    try:
                        folder.rmdir()
                    except OSError:
                        pass
            try:
                self.cgroup.rmdir()
            except OSError:
                time.sleep(0.05)
        assert not self.cgroup.exists(), f"{self.cgroup} is left behind"


def _box_database(dsn: str) -> tuple[str, str | None]:
    """The DSN cartd uses inside the box, and the host's socket to bring in (or None: TCP)."""
    parts = urlsplit(dsn)
    host = parse_qs(parts.query).get("host", [parts.hostname or ""])[0]
    if not host.startswith("/"):
        return dsn, None
    [sock] = [p for p in Path(host).glob(".s.PGSQL.*") if not p.name.endswith(".lock")]
    port = sock.name.rsplit(".", 1)[1]
    query = f"host={PG_DIR}&port={port}"
    return urlunsplit(parts._replace(query=query)), str(sock)


@pytest.fixture
async def box(dsn: str) -> AsyncIterator[tuple[Box, str]]:
    """A booted box and the DSN of the test database as cartd reaches it from there."""
    inside_dsn, sock = _box_database(dsn)
    made = Box(sock)
    try:
        await asyncio.to_thread(made.boot)
        yield made, inside_dsn
    finally:
        await asyncio.to_thread(made.close)


def _config(receiver_url: str) -> str:
    """The example config as the README's step 4 has the operator adapt it."""
    text = (ROOT / "systemd" / "cartd.yaml").read_text()
    for key, value in (("default_mode", "mock"), ("url", receiver_url),
                       ("listen", f"127.0.0.1:{free_port()}"), ("interval", "10s")):
        text, found = re.subn(rf"^(\s+{key}:) \S+", rf"\1 {value}", text, count=1, flags=re.M)
        assert found, key
    return text


def _install(box: Box, dsn: str, receiver_url: str) -> None:
    """README "Running as a systemd service", steps 1, 2 (our build of it), 4, 5 and 6."""
    setup = box.run(f"""set -e
install -Dm644 {SOURCE}/systemd/cartd.sysusers /usr/lib/sysusers.d/cartd.conf
systemd-sysusers
mkdir -p /opt/cartd/bin /etc/cartd /etc/systemd/system/cartd.service.d
ln -s /opt/cartd/bin/cartd /usr/local/bin/cartd
install -m 0644 {SOURCE}/systemd/cartd.service /etc/systemd/system/cartd.service""")
    assert setup.returncode == 0, setup.stderr
    launcher = box.path("/opt/cartd/bin/cartd")
    launcher.write_text(LAUNCHER)
    launcher.chmod(0o755)
    box.path("/etc/cartd/cartd.yaml").write_text(_config(receiver_url))
    box.path("/etc/cartd/webhook-secret").write_text(SECRET + "\n")
    box.path("/etc/cartd/database-dsn").write_text(dsn + "\n")
    box.path("/etc/systemd/system/cartd.service.d/test.conf").write_text(DROP_IN)
    modes = box.run("""set -e
chown root:cartd /etc/cartd/cartd.yaml && chmod 0640 /etc/cartd/cartd.yaml
chmod 0600 /etc/cartd/webhook-secret /etc/cartd/database-dsn
systemctl daemon-reload""")
    assert modes.returncode == 0, modes.stderr


async def _status(box: Box) -> dict:
    connector = aiohttp.UnixConnector(path=str(box.path("/run/cartd/control.sock")))
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.get("http://cartd/status") as response:
            return await response.json()


async def _in(box: Box, line: str) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(box.run, line)


async def test_the_unit_under_a_real_systemd(box, store):
    machine, dsn = box
    await add_agents(store, 3)
    async with scripted_receiver() as receiver:
        await asyncio.to_thread(_install, machine, dsn, receiver.url)
        await _started_and_delivering(machine, receiver)
        await _hardened(machine)
        await _reloads(machine)
        await _watchdog_restarts_a_stopped_process(machine)
        stop = await _in(machine, "systemctl stop cartd")
        assert stop.returncode == 0, stop.stderr
        assert (machine.prop("Result"), machine.prop("ExecMainStatus")) == ("success", "0")
        assert machine.prop("ActiveState") == "inactive"


async def _started_and_delivering(box: Box, receiver) -> None:
    start = await _in(box, "systemctl start cartd")  # Type=notify: returns after READY=1
    assert start.returncode == 0, (start.stderr, box.run("journalctl -u cartd -n 30").stdout)
    assert (box.prop("ActiveState"), box.prop("SubState")) == ("active", "running")
    await wait_until(lambda: box.prop("StatusText").startswith("cycle 1: 3 agents"), timeout=20)
    await wait_until(lambda: len(receiver.requests) >= 3, timeout=20)
    signer = Signer((SECRET,))
    for headers, body in receiver.requests:
        signer.verify(headers, body)
    assert (await _status(box))["database"] == "ok"  # the DSN came as a credential


async def _hardened(box: Box) -> None:
    pid = box.prop("MainPID")
    status = (await _in(box, f"cat /proc/{pid}/status")).stdout
    fields = dict(re.findall(r"^(\w+):\s+(.*)$", status, flags=re.M))
    assert (fields["CapEff"], fields["CapBnd"]) == ("0000000000000000", "0000000000000000")
    assert (fields["NoNewPrivs"], fields["Seccomp"]) == ("1", "2")  # seccomp filter mode
    uid = fields["Uid"].split()[0]
    assert uid == (await _in(box, "id -u cartd")).stdout.strip() != "0"
    for home in ("/home", "/root"):
        look = await _in(box, f"nsenter -t {pid} -m -U -S {uid} -G {uid} ls {home}")
        assert look.returncode != 0 and "Permission denied" in look.stderr, home


async def _reloads(box: Box) -> None:
    config = box.path("/etc/cartd/cartd.yaml")
    good = config.read_text().replace("interval: 10s", "interval: 11s")
    config.write_text(good)
    pid = box.prop("MainPID")
    reload = await _in(box, "systemctl reload cartd")
    assert reload.returncode == 0, (reload.stderr, box.run("journalctl -u cartd -n 20").stdout)
    await wait_until(lambda: _interval_is(box, 11), timeout=10)

    config.write_text(good.replace("interval: 11s", "interval: 12s") + "webhook: {url: [\n")
    broken = await _in(box, "systemctl reload cartd")
    journal = (await _in(box, "journalctl -u cartd -o cat -n 20")).stdout
    assert broken.returncode != 0 and "cartd: config: /etc/cartd/cartd.yaml at line" in journal
    ctl = await _in(box, "cartd ctl status")  # as the operator runs it: no --socket
    assert ctl.returncode == 0, ctl.stderr
    shown = json.loads(ctl.stdout)
    assert shown["interval_seconds"] == 11 and shown["config_error"] is None  # not signalled
    assert (box.prop("SubState"), box.prop("MainPID")) == ("running", pid)
    config.write_text(good)


async def _interval_is(box: Box, seconds: float) -> bool:
    return (await _status(box))["interval_seconds"] == seconds


async def _watchdog_restarts_a_stopped_process(box: Box) -> None:
    pid = box.prop("MainPID")
    assert box.prop("WatchdogUSec") == "3s" and box.prop("NRestarts") == "0"
    await _in(box, f"kill -STOP {pid}")
    await wait_until(lambda: box.prop("NRestarts") == "1" and box.prop("SubState") == "running",
                     timeout=20)
    assert box.prop("MainPID") != pid
    journal = (await _in(box, "journalctl -u cartd -o cat")).stdout
    assert "Watchdog timeout (limit 3s)!" in journal and "Failed with result 'watchdog'" in journal
