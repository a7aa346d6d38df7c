"""Run untrusted Python (generated code and its tests) in a subprocess, and profile it.

HumanEval's own checker `exec`s in-process with some monkeypatching ("not a
sandbox", its authors say). Here each run gets:

- a fresh temporary directory as its working directory (removed afterwards), an
  isolated interpreter (`-I`: no environment variables, no user site) and an empty
  environment;
- `RLIMIT_CPU`, `RLIMIT_AS`, `RLIMIT_FSIZE` and a wall-clock timeout;
- its own session and process group, killed whole at the end, so a child it left
  running dies with it;
- processes: where a pids cgroup can be made (root, `/sys/fs/cgroup/pids` or a
  v2 hierarchy with `pids`), the run and everything it starts join one with
  `pids.max` = `max-processes`: a fork bomb hits the ceiling, and every process in
  the group is killed at the end, even one that left the process group with
  `setsid`. (`RLIMIT_NPROC` does not bind root.) Without such a cgroup the audit
  hook refuses `fork` altogether;
- network: a network namespace of its own (`unshare(CLONE_NEWNET)` before exec,
  allowed to root): no interfaces but a downed loopback, so nothing is reachable.
  Where the kernel refuses, the audit hook refuses sockets instead;
- files: the audit hook in `harness` refuses writes, renames, removals and
  links outside the directory, and starting programs or ctypes (ways around the
  hook).

`SandboxResult.isolation` says which of these mechanisms each run got, so a run
on a machine that cannot give the kernel ones says so. Memory is sampled from
here while the program runs (`profiler`).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .profiler import MemoryTrace, Profile, profile_of, rss_bytes

HARNESS = Path(__file__).with_name("harness.py")
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
OUTPUT_LIMIT = 20_000  # characters of stdout/stderr kept
SIGNAL_STATUS = {
    signal.SIGXCPU: "cpu-limit",
    signal.SIGXFSZ: "file-limit",
}
CGROUP_PREFIX = "spry-sandbox-"  # then the parent's pid and a random suffix
PIDS_ROOTS = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup"))

_libc = ctypes.CDLL(None, use_errno=True)  # loaded here: preexec must not dlopen


@dataclass(frozen=True)
class Limits:
    """What one run may use.

    Parameters
    ----------
    cpu_seconds : int (default: 5)
        RLIMIT_CPU, per process; past it the kernel sends SIGXCPU.
    memory_bytes : int (default: 1 GiB)
        RLIMIT_AS, the address space per process (allocations past it fail).
    file_bytes : int (default: 16 MiB)
        RLIMIT_FSIZE, the largest file it may write.
    wall_seconds : float (default: 10.0)
        Then the whole run is killed.
    max_processes : int (default: 16)
        pids.max of the run's cgroup (processes and threads together).
    network_namespace : bool (default: True)
        Ask for a network namespace; False (or a refusal) uses the audit hook.
    pids_cgroup : bool (default: True)
        Ask for a pids cgroup; False (or none writable) refuses `fork` instead.
    sample_interval : float (default: 0.002)
        Seconds between two RSS samples.
    line_profile : bool (default: False)
        Trace the program's lines (slower: for feedback, not for the metrics).
    top_lines : int (default: 8)
        Hottest lines reported when tracing.
    python : str (default: this interpreter)
        The interpreter that runs the program (only its standard library is used).
    """

    cpu_seconds: int = 5
    memory_bytes: int = 1 << 30
    file_bytes: int = 16 << 20
    wall_seconds: float = 10.0
    max_processes: int = 16
    network_namespace: bool = True
    pids_cgroup: bool = True
    sample_interval: float = 0.002
    line_profile: bool = False
    top_lines: int = 8
    python: str = field(default_factory=lambda: sys.executable)


@dataclass(frozen=True)
class SandboxResult:
    """How a run ended, what it printed, its profile and the isolation it had.

    `status`: passed (ran to the end), failed (an AssertionError: a test), error
    (another exception, MemoryError included, or exit), timeout (wall clock),
    cpu-limit, file-limit, killed (another signal).
    """

    status: str
    error: str
    returncode: int | None
    stdout: str
    stderr: str
    wall: float
    profile: Profile | None
    isolation: dict[str, str]

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run_program(
    source: str, limits: Limits | None = None, *, call: str = ""
) -> SandboxResult:
    """Run `source` as `program.py` in a fresh sandbox; profile it; clean up.

    With `call` (a statement, e.g. "check(f)"), `source` runs first untimed and
    the profile covers only `call`, run in the program's namespace.
    """
    limits = limits or Limits()
    folder = Path(tempfile.mkdtemp(prefix="spry-sandbox-"))
    cgroup = make_pids_cgroup(limits.max_processes) if limits.pids_cgroup else None
    read_end, write_end = os.pipe()
    try:
        (folder / "program.py").write_text(source)
        shutil.copyfile(HARNESS, folder / "harness.py")
        settings = {
            "fd": write_end,
            "parent-net": os.readlink("/proc/self/ns/net"),
            "allow-fork": cgroup is not None,
            "line-profile": limits.line_profile,
            "top-lines": limits.top_lines,
            "call": call,
        }
        with open(folder / "stdout", "w") as out, open(folder / "stderr", "w") as err:
            proc = subprocess.Popen(
                [limits.python, "-I", "harness.py", json.dumps(settings)],
                cwd=folder,
                env={},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                pass_fds=(write_end,),
                start_new_session=True,
                preexec_fn=_confine(limits, cgroup),
            )
        os.close(write_end)
        write_end = -1
        trace, timed_out, began = MemoryTrace(), False, time.monotonic()
        deadline = began + limits.wall_seconds
        while proc.poll() is None:
            now = time.monotonic()
            trace.add(now, rss_bytes(proc.pid))
            if now > deadline:
                timed_out = True
                break
            time.sleep(limits.sample_interval)
        wall = time.monotonic() - began
        kill_all(proc, cgroup)
        report = read_report(read_end)
        return _result(proc.returncode, timed_out, wall, report, trace, folder, cgroup)
    finally:
        if write_end >= 0:
            os.close(write_end)
        os.close(read_end)
        if cgroup is not None:
            remove_cgroup(cgroup)
        shutil.rmtree(folder, ignore_errors=True)


def _confine(limits: Limits, cgroup: Path | None):  # noqa: ANN202
    """The child's preexec: join the cgroup, leave the network, set the limits.

    Runs between fork and exec, so only system calls: no imports, no dlopen.
    """
    procs = str(cgroup / "cgroup.procs") if cgroup is not None else ""

    def confine() -> None:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # dies if this process does
        if procs:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
        if limits.network_namespace:
            _libc.unshare(CLONE_NEWNET)  # refused without CAP_SYS_ADMIN: the hook
        cpu = limits.cpu_seconds
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        memory = limits.memory_bytes
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        size = limits.file_bytes
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return confine


def make_pids_cgroup(max_processes: int) -> Path | None:
    """A fresh pids cgroup with `pids.max`, or None where none can be made."""
    for root in PIDS_ROOTS:
        v2 = root == Path("/sys/fs/cgroup")
        if v2:
            controllers = root / "cgroup.subtree_control"
            with contextlib.suppress(OSError):
                if "pids" not in controllers.read_text().split():
                    continue
        if not (root / "cgroup.procs").exists():
            continue
        sweep_stale(root)
        path = root / f"{CGROUP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            path.mkdir()
            (path / "pids.max").write_text(str(max_processes))
            return path
        except OSError:
            with contextlib.suppress(OSError):
                path.rmdir()
    return None


def sweep_stale(root: Path) -> None:
    """Empty and remove the cgroups of sandboxes whose parent process has died.

    A parent killed mid-run never reached its `finally`; what its run started
    may still be running in the cgroup (the run itself died with its parent).
    """
    for path in root.glob(f"{CGROUP_PREFIX}*"):
        owner = path.name[len(CGROUP_PREFIX) :].split("-")[0]
        if owner.isdigit() and not os.path.exists(f"/proc/{owner}"):
            for pid in cgroup_pids(path):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                path.rmdir()  # busy until they are reaped: the next sweep


def kill_all(proc: subprocess.Popen, cgroup: Path | None) -> None:
    """SIGKILL the run's process group and every process in its cgroup; reap."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if cgroup is not None:
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            pids = cgroup_pids(cgroup)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.005)
    proc.wait()


def cgroup_pids(cgroup: Path) -> list[int]:
    try:
        return [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
    except OSError:
        return []


def remove_cgroup(cgroup: Path) -> None:
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        try:
            cgroup.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:  # busy until the last killed process is reaped
            time.sleep(0.01)


def read_report(read_end: int) -> dict | None:
    """The harness's JSON, if it wrote one (a killed run did not)."""
    os.set_blocking(read_end, False)
    chunks = []
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(read_end, 65536):
            chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except ValueError:
        return None


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-OUTPUT_LIMIT:]
    except OSError:
        return ""


def _result(
    returncode: int | None,
    timed_out: bool,
    wall: float,
    report: dict | None,
    trace: MemoryTrace,
    folder: Path,
    cgroup: Path | None,
) -> SandboxResult:
    stderr = _tail(folder / "stderr")
    profile = None
    if timed_out:
        status, error = "timeout", f"killed after {wall:.1f} s (wall clock)"
    elif report is not None:
        status, error = report["status"], report["error"]
        profile = profile_of(
            trace, report["start"], report["end"], report["hwm-kib"] * 1024,
            report["lines"],
        )  # fmt: skip
    elif returncode is not None and returncode < 0:
        status = SIGNAL_STATUS.get(-returncode, "killed")
        error = f"killed by {signal_name(-returncode)}"
    else:
        status = "error"
        error = stderr.strip().splitlines()[-1] if stderr.strip() else "no report"
    namespaced = bool(report and report.get("net-namespace"))
    isolation = {
        "network": "namespace" if namespaced else "audit-hook",
        "processes": "pids-cgroup" if cgroup is not None else "no-fork (audit hook)",
        "files": "audit-hook",
    }
    if report is None:  # it never reported: say what was asked for
        isolation["network"] = "unknown"
    return SandboxResult(
        status=status,
        error=error,
        returncode=returncode,
        stdout=_tail(folder / "stdout"),
        stderr=stderr,
        wall=wall,
        profile=profile,
        isolation=isolation,
    )
