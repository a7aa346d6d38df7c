"""SOAP's sandbox and profiler, on real subprocesses.

Each test runs a hostile or a measured program for real: a fork bomb, a memory
hog, an infinite loop, a sleeper past the wall clock, writes and removals outside
the run's folder, a TCP connection to a server this test listens on, a child (and
a `setsid` grandchild) left running, a program it tries to start. The profiler is
checked on hand-made samples (exact areas) and on a program with a known memory
curve: 64 MiB held for 0.6 s within a 1.2 s run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest

from spry.tasks.soap.profiler import MB, MemoryTrace, Profile, profile_of
from spry.tasks.soap.sandbox import (
    CGROUP_PREFIX,
    Limits,
    make_pids_cgroup,
    remove_cgroup,
    run_program,
    sweep_stale,
)

pytestmark = pytest.mark.skipif(
    not os.path.exists("/proc/self/status"), reason="the sandbox reads /proc (Linux)"
)


def _has_pids_cgroup() -> bool:
    cgroup = make_pids_cgroup(4)
    if cgroup is None:
        return False
    remove_cgroup(cgroup)
    return True


HAS_CGROUP = _has_pids_cgroup()
IS_ROOT = os.geteuid() == 0


def dead(pid: int) -> bool:
    """Gone, or a zombie (killed; its exit status waits for a reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


# -- what it stops ------------------------------------------------------------------


@pytest.mark.skipif(not HAS_CGROUP, reason="no writable pids cgroup here")
def test_a_fork_bomb_hits_the_pids_ceiling_and_every_process_dies():
    bomb = (
        "import os\n"
        "print(os.getpid(), flush=True)\n"
        "while True:\n"
        "    if os.fork() == 0:\n"
        "        print(os.getpid(), flush=True)\n"
    )
    began = time.monotonic()
    result = run_program(bomb, Limits(max_processes=12, wall_seconds=10))
    assert time.monotonic() - began < 8  # stopped by the ceiling, not the clock
    assert result.status == "error" and "BlockingIOError" in result.error
    assert result.isolation["processes"] == "pids-cgroup"
    pids = {int(p) for p in result.stdout.split()}
    assert 2 <= len(pids) <= 12
    assert all(dead(pid) for pid in pids)


def test_without_a_cgroup_fork_is_refused():
    program = "import os\nos.fork()\n"
    result = run_program(program, Limits(pids_cgroup=False))
    assert result.status == "error"
    assert "fork refused" in result.error
    assert result.isolation["processes"] == "no-fork (audit hook)"


def test_a_memory_hog_gets_a_memory_error_at_the_address_space_limit():
    hog = "chunks = []\nwhile True:\n    chunks.append(b'x' * (16 << 20))\n"
    result = run_program(hog, Limits(memory_bytes=512 << 20))
    assert result.status == "error" and "MemoryError" in result.error
    assert result.profile is not None
    assert 300 < result.profile.mu < 512  # it grew, and never past the limit


def test_an_infinite_loop_is_stopped_by_the_cpu_limit():
    began = time.monotonic()
    result = run_program("while True:\n    pass\n", Limits(cpu_seconds=1))
    assert result.status == "cpu-limit" and "SIGXCPU" in result.error
    assert time.monotonic() - began < 5


def test_a_sleeper_is_stopped_by_the_wall_clock():
    result = run_program("import time\ntime.sleep(60)\n", Limits(wall_seconds=1.0))
    assert result.status == "timeout"
    assert 1.0 <= result.wall < 3.0


def test_no_write_outside_its_folder(tmp_path):
    outside = tmp_path / f"escape-{uuid.uuid4().hex}.txt"
    kept = tmp_path / "kept.txt"
    kept.write_text("mine")
    for program in (
        f"open({str(outside)!r}, 'w').write('x')\n",
        f"import os\nos.open({str(outside)!r}, os.O_WRONLY | os.O_CREAT)\n",
        f"import os\nos.remove({str(kept)!r})\n",
        f"import os\nos.rename({str(kept)!r}, 'stolen.txt')\n",
        f"import shutil\nshutil.rmtree({str(tmp_path)!r})\n",
        "import os\nos.symlink('/etc', 'etc')\nopen('etc/x', 'w')\n",
        # a descriptor of a folder outside, then a relative path against it
        f"import os\nd = os.open({str(tmp_path)!r}, os.O_RDONLY)\n"
        f"os.open({outside.name!r}, os.O_WRONLY | os.O_CREAT, dir_fd=d)\n",
    ):
        result = run_program(program)
        assert result.status == "error", program
        assert "PermissionError" in result.error, (program, result.error)
    assert not outside.exists()
    assert kept.read_text() == "mine"


def test_writes_inside_its_folder_work_and_the_folder_is_fresh():
    program = (
        "import os\n"
        "open('note.txt', 'w').write('inside')\n"
        "print(open('note.txt').read(), sorted(os.listdir('.')), dict(os.environ))\n"
        "print(os.getcwd())\n"
    )
    first = run_program(program)
    second = run_program(program)
    assert first.status == "passed", first.error
    lines = first.stdout.splitlines()
    assert lines[0].startswith("inside ['harness.py', 'note.txt', 'program.py'")
    environment = eval(lines[0].split("] ", 1)[1])  # noqa: S307  (our own print)
    assert set(environment) <= {"LC_CTYPE"}  # empty but for the C locale's coercion
    folder = lines[1]
    assert folder != second.stdout.splitlines()[1]  # a fresh folder each run
    assert not os.path.exists(folder)  # removed afterwards


def test_a_file_past_the_size_limit_stops_the_run():
    # Python ignores SIGXFSZ, so the write fails (EFBIG) instead of the process
    program = "open('big', 'wb').write(b'x' * (4 << 20))\n"
    result = run_program(program, Limits(file_bytes=1 << 20))
    assert result.status == "error" and "File too large" in result.error


def _listening() -> socket.socket:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    return server


def _connects_to(port: int) -> str:
    return (
        "import socket\n"
        f"socket.create_connection(('127.0.0.1', {port}), timeout=2).send(b'hi')\n"
    )


def _accepted(server: socket.socket) -> bool:
    try:
        connection, _ = server.accept()
    except TimeoutError:
        return False
    connection.close()
    return True


@pytest.mark.skipif(not IS_ROOT, reason="a network namespace needs root")
def test_no_network_in_its_own_namespace():
    with _listening() as server:
        port = server.getsockname()[1]
        result = run_program(_connects_to(port))
        assert result.isolation["network"] == "namespace"
        assert result.status == "error" and "unreachable" in result.error
        assert not _accepted(server)


def test_no_network_through_the_audit_hook_without_a_namespace():
    with _listening() as server:
        port = server.getsockname()[1]
        # the same connection, unconfined: the listener does receive it
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            assert _accepted(server)
        result = run_program(_connects_to(port), Limits(network_namespace=False))
        assert result.isolation["network"] == "audit-hook"
        assert result.status == "error" and "network refused" in result.error
        assert not _accepted(server)


@pytest.mark.skipif(not HAS_CGROUP, reason="fork needs the pids cgroup")
def test_a_child_left_running_is_killed_with_the_run():
    program = (
        "import os, time\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    if os.fork() == 0:\n"
        "        os.setsid()  # leaves the process group\n"
        "        print('grandchild', os.getpid(), flush=True)\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "print('child', child, flush=True)\n"
        "time.sleep(0.3)\n"
    )
    result = run_program(program)
    assert result.status == "passed", result.error
    pids = {
        w: int(p)
        for w, p in (line.split() for line in result.stdout.split("\n") if line)
    }
    assert set(pids) == {"child", "grandchild"}
    assert all(dead(pid) for pid in pids.values())


def test_starting_a_program_is_refused():
    for program in (
        "import subprocess\nsubprocess.run(['true'])\n",
        "import os\nos.system('true')\n",
        "import os\nos.execv('/bin/true', ['true'])\n",
        "import ctypes\nctypes.CDLL(None)\n",
        # the call under subprocess.Popen, which skips its audit event
        "import _posixsubprocess\n",
    ):
        result = run_program(program)
        assert result.status == "error", program
        assert "refused" in result.error, (program, result.error)


def test_outcomes_of_ordinary_programs():
    assert run_program("x = 1\n").status == "passed"
    failed = run_program("def f():\n    return 1\nassert f() == 2\n")
    assert failed.status == "failed" and "line 3" in failed.error
    raised = run_program("1 / 0\n")
    assert raised.status == "error" and "ZeroDivisionError" in raised.error
    exited = run_program("import sys\nsys.exit(0)\nassert False\n")
    assert exited.status == "error" and "exit" in exited.error


# -- the profiler ----------------------------------------------------------------------


def test_memory_trace_area_is_the_step_curve_integral():
    trace = MemoryTrace()
    for when, value in [(0.0, 10), (1.0, 30), (2.0, 20), (4.0, 5)]:
        trace.add(when, value)
    assert trace.area(0.0, 4.0) == pytest.approx(10 * 1 + 30 * 1 + 20 * 2)
    assert trace.area(0.5, 1.5) == pytest.approx(10 * 0.5 + 30 * 0.5)
    assert trace.area(4.0, 6.0) == pytest.approx(5 * 2)  # held after the last
    assert trace.area(-1.0, 0.0) == pytest.approx(10)  # the first, before it
    assert trace.peak(0.5, 1.5) == 30 and trace.peak(2.5, 3.0) == 20
    profile = profile_of(trace, 0.0, 4.0, hwm_bytes=0)
    assert profile.et == 4.0 and profile.mu == 30 / MB and profile.samples == 4
    # the kernel's peak wins over the samples when a spike fell between them
    assert profile_of(trace, 0.0, 4.0, hwm_bytes=int(64 * MB)).mu == 64


def test_normalized_profile_is_the_ratio_to_the_reference():
    mine = Profile(et=0.2, mu=30.0, tmu=3.0, samples=5)
    canonical = Profile(et=0.1, mu=20.0, tmu=1.0, samples=5)
    assert mine.normalized(canonical) == pytest.approx(
        {"net": 2.0, "nmu": 1.5, "ntmu": 3.0}
    )


def test_profile_of_a_known_memory_curve():
    """Hold 64 MiB for 0.6 s of a 1.2 s run: MU +64 MiB, TMU +64 MiB*0.6 s."""
    idle = "import time\ntime.sleep(1.2)\n"
    curve = (
        "import time\n"
        "block = b'\\x01' * (64 << 20)  # written: resident at once\n"
        "time.sleep(0.6)\n"
        "del block\n"
        "time.sleep(0.6)\n"
    )
    base = run_program(idle).profile
    known = run_program(curve).profile
    assert base is not None and known is not None
    # the sleeps take 1.2 s; writing 64 MiB takes what the loaded machine allows
    assert 1.2 <= known.et < 1.8
    writing = known.et - 1.2
    assert known.mu - base.mu == pytest.approx(64, abs=6)
    # TMU above the idle interpreter's: the block is resident at least 0.6 s and at
    # most 0.6 s plus the time it took to write it
    extra = known.tmu - base.tmu * known.et / base.et
    assert 64 * 0.6 * 0.95 <= extra <= 64 * (0.6 + writing) * 1.05 + 1
    assert known.samples > 100  # sampled every few ms


def test_a_call_is_timed_without_the_definitions():
    program = "import time\ntime.sleep(0.5)\ndef check():\n    time.sleep(0.2)\n"
    result = run_program(program, call="check()")
    assert result.status == "passed"
    assert result.profile.et == pytest.approx(0.2, abs=0.08)
    assert result.wall > 0.65  # the definitions did run, untimed


def test_the_line_profile_names_the_hot_line():
    program = (
        "def slow(n):\n"
        "    total = 0\n"
        "    for i in range(n):\n"
        "        total += i * i\n"
        "    return total\n"
        "assert slow(200_000) > 0\n"
    )
    result = run_program(program, Limits(line_profile=True), call="")
    lines = {line: (hits, seconds) for line, hits, seconds in result.profile.lines}
    assert lines[4][0] == 200_000 and lines[3][0] == 200_001
    hottest_inside = max((3, 4, 5), key=lambda n: lines[n][1])
    assert hottest_inside in (3, 4)


@pytest.mark.skipif(not HAS_CGROUP, reason="no writable pids cgroup here")
def test_a_dead_parents_cgroup_and_what_runs_in_it_are_swept():
    # a parent that died mid-run: its cgroup holds a sleeper nobody will kill
    dead_parent = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_parent.wait()
    own = make_pids_cgroup(4)
    stale = own.with_name(f"{CGROUP_PREFIX}{dead_parent.pid}-0000")
    stale.mkdir()
    remove_cgroup(own)
    sleeper = subprocess.Popen(["sleep", "60"])
    (stale / "cgroup.procs").write_text(str(sleeper.pid))
    fresh = make_pids_cgroup(4)  # sweeps while it makes one
    assert sleeper.wait(timeout=5) == -signal.SIGKILL
    remove_cgroup(fresh)
    sweep_stale(stale.parent)  # the sleeper reaped: its emptied group goes too
    assert not stale.exists()
