"""Real deployment processes for tests: a SuperLink, SuperNodes and `flwr`, started
through the project's own scripts, on loopback or in Linux network namespaces.

Every process carries a marker in its environment, which its children inherit (the
ServerApp and ClientApp processes Flower spawns among them), so the test can prove
that nothing it started outlives it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
MARKER = "SPRY_DEPLOY_TEST"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Processes:
    """The processes of one test, each in its own session, with its log file."""

    logs: Path
    marker: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: dict[str, subprocess.Popen] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        venv_bin = str(Path(sys.executable).parent)
        return {
            **os.environ,
            "PATH": f"{venv_bin}:{os.environ['PATH']}",
            "HF_HUB_OFFLINE": "1",
            MARKER: self.marker,
            **extra,
        }

    def start(
        self, name: str, argv: Sequence[str], *, netns: str | None = None, **env: str
    ) -> subprocess.Popen:
        prefix = ["ip", "netns", "exec", netns] if netns else []
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(
            [*prefix, *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env(**env),
            cwd=ROOT,
            start_new_session=True,
        )
        log.close()
        self.started[name] = process
        return process

    def run(
        self, name: str, argv: Sequence[str], *, netns: str | None = None,
        timeout: float = 120, **env: str,
    ) -> str:  # fmt: skip
        """Run to completion; its output (also in the log), or AssertionError."""
        process = self.start(name, argv, netns=netns, **env)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{name} still runs after {timeout:.0f} s") from None
        output = self.log(name)
        assert process.returncode == 0, f"{name} exited {process.returncode}:\n{output}"
        return output

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def wait_for(self, name: str, pattern: str, timeout: float = 120) -> str:
        """Wait until `name`'s log matches `pattern`; fail early if it exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log(name)
            if re.search(pattern, text):
                return text
            if self.started[name].poll() is not None and not re.search(
                pattern, self.log(name)
            ):
                raise AssertionError(
                    f"{name} exited {self.started[name].returncode} before "
                    f"{pattern!r}:\n{text[-3000:]}"
                )
            time.sleep(0.5)
        raise AssertionError(f"no {pattern!r} in {name}'s log after {timeout:.0f} s")

    def alive(self) -> list[psutil.Process]:
        """Every live process carrying this test's marker."""
        found = []
        for process in psutil.process_iter():
            try:
                if process.environ().get(MARKER) == self.marker:
                    found.append(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    def stop_all(self, grace: float = 15) -> list[psutil.Process]:
        """SIGTERM every marked process, SIGKILL what is left; the survivors."""
        for process in self.started.values():
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for process in self.alive():
            _signal(process, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.5)
        for process in self.alive():
            _signal(process, signal.SIGKILL)
        for process in self.started.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        time.sleep(0.5)
        return self.alive()


def remove_orphaned_namespaces() -> list[str]:
    """Delete namespaces left by an earlier test process that was killed outright.

    `finally` cleans up after a failure, but not after SIGKILL or a lost machine;
    names carry the creating process id, so the next run can tell theirs are stale.
    """
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    removed = []
    for ns, pid in re.findall(r"^(spry(\d+)-\S+)", listed.stdout, re.M):
        if not psutil.pid_exists(int(pid)):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            removed.append(ns)
    return removed


def _signal(process: psutil.Process, signum: int) -> None:
    try:
        process.send_signal(signum)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass


@dataclass
class Network:
    """Hosts as Linux network namespaces on one bridge: a LAN on this machine.

    The bridge lives in a namespace of its own, so nothing touches the host's
    network; deleting the namespaces removes every link with them.
    """

    hosts: Sequence[str]
    subnet: str = "10.231.0"
    prefix: str = field(default_factory=lambda: f"spry{os.getpid()}")
    created: list[str] = field(default_factory=list)

    def namespace(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def address(self, host: str) -> str:
        return f"{self.subnet}.{self.hosts.index(host) + 1}"

    def up(self) -> None:
        remove_orphaned_namespaces()
        switch = self.namespace("switch")
        self._ip("netns", "add", switch)
        self.created.append(switch)
        self._ip("-n", switch, "link", "add", "br0", "type", "bridge")
        self._ip("-n", switch, "link", "set", "br0", "up")
        for index, host in enumerate(self.hosts):
            ns = self.namespace(host)
            self._ip("netns", "add", ns)
            self.created.append(ns)
            outer = f"{self.prefix[-6:]}v{index}"
            self._ip("link", "add", outer, "type", "veth", "peer", "name", "eth0",
                     "netns", ns)  # fmt: skip
            self._ip("link", "set", outer, "netns", switch)
            self._ip("-n", switch, "link", "set", outer, "master", "br0", "up")
            self._ip("-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", "eth0")
            self._ip("-n", ns, "link", "set", "eth0", "up")
            self._ip("-n", ns, "link", "set", "lo", "up")

    def down(self) -> list[str]:
        """Delete every namespace made here; the ones still listed afterwards."""
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        listed = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True
        ).stdout
        return [ns for ns in self.created if re.search(rf"^{ns}\b", listed, re.M)]

    @staticmethod
    def _ip(*args: str) -> None:
        result = subprocess.run(["ip", *args], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
