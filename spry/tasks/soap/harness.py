"""What runs inside the sandbox: the program under an audit hook, timed and traced.

`spry.tasks.soap.sandbox` copies this file into the run's fresh directory and
starts it as `python -I harness.py <settings JSON>`, with an empty environment;
it imports only the standard library. It

- installs an audit hook (PEP 578) that refuses, with PermissionError: opening
  a file for writing, and renaming, removing, linking or changing files, outside
  the working directory, and opening a folder outside it (whose descriptor
  `dir_fd=` calls could write through); starting programs (`exec*`,
  `posix_spawn`, `os.system`, `subprocess`, importing `_posixsubprocess`);
  loading C code through ctypes (which could step around the hook); signalling
  other processes; and, where the parent says so, sockets (no network
  namespace) and `fork` (no pids cgroup to bound a fork bomb);
- runs `program.py` once, timing it with the monotonic clock the parent also reads
  (so the parent integrates the memory it sampled over exactly this window); with
  a `call` (HumanEval's `check(entry_point)`), the program only defines, untimed,
  and the window is the call: the tests, not the imports;
- with `line-profile`, traces the program's own lines (hits and seconds, calls
  included, as line_profiler reports them) for the feedback prompt;
- writes one JSON object (status, times, the peak RSS `VmHWM`, the line profile)
  to the pipe the parent passed, and leaves with `os._exit`.

An audit hook is not a security boundary on its own (CPython says so): it is one
layer; the parent adds the resource limits, the process group or cgroup kill and
the network namespace, which the kernel enforces.
"""

import json
import os
import sys
import time
import traceback

PROGRAM = "program.py"
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
ALWAYS_REFUSED = {
    "os.exec": "starting programs",
    "os.posix_spawn": "starting programs",
    "os.spawn": "starting programs",
    "os.system": "starting programs",
    "subprocess.Popen": "starting programs",
    "pty.spawn": "starting programs",
    "ctypes.dlopen": "ctypes",
    "ctypes.dlsym": "ctypes",
    "ctypes.dlsym/handle": "ctypes",
    "ctypes.cdata": "ctypes",
    "ctypes.call_function": "ctypes",
    "os.killpg": "signalling processes",
    "signal.pthread_kill": "signalling processes",
}
# fork_exec starts programs without the "subprocess.Popen" event
REFUSED_IMPORTS = {"_posixsubprocess"}
NETWORK = {"socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo"}
FORK = {"os.fork", "os.forkpty"}
# event -> indexes of the path arguments it changes
PATH_EVENTS = {
    "os.rename": (0, 1),
    "os.remove": (0,),
    "os.rmdir": (0,),
    "os.mkdir": (0,),
    "os.chmod": (0,),
    "os.chown": (0,),
    "os.link": (0, 1),
    "os.symlink": (1,),
    "os.truncate": (0,),
    "os.utime": (0,),
    "os.setxattr": (0,),
    "os.removexattr": (0,),
    "shutil.rmtree": (0,),
    "shutil.move": (0, 1),
    "shutil.copyfile": (1,),
}


def main() -> None:
    settings = json.loads(sys.argv[1])
    out = os.fdopen(int(settings["fd"]), "w")
    root = os.path.realpath(os.getcwd())
    with open(PROGRAM) as f:
        source = f.read()
    refused = dict(ALWAYS_REFUSED)
    own_net = os.readlink("/proc/self/ns/net")
    if own_net == settings["parent-net"]:  # no namespace of our own: refuse sockets
        refused.update(dict.fromkeys(NETWORK, "network"))
    if not settings["allow-fork"]:
        refused.update(dict.fromkeys(FORK, "fork"))
    own_pid = os.getpid()

    def inside(path: object) -> bool:
        if isinstance(path, int):  # an open descriptor: opened through this hook
            return True
        if not isinstance(path, (str, bytes, os.PathLike)):
            return True
        full = os.path.realpath(os.fsdecode(path))
        return full == root or full.startswith(root + os.sep)

    def hook(event: str, args: tuple) -> None:
        if event in refused:
            raise PermissionError(f"sandbox: {refused[event]} refused ({event})")
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None))[:3]
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & WRITE_FLAGS
            )
            if writes and not inside(path):
                raise PermissionError(f"sandbox: writing outside its folder: {path}")
            # a directory's descriptor outside would let `dir_fd=` calls write
            # where the path checked here does not point
            if not inside(path) and os.path.isdir(os.fsdecode(path)):
                raise PermissionError(f"sandbox: opening a folder outside: {path}")
        elif event == "import" and args and args[0] in REFUSED_IMPORTS:
            raise PermissionError(f"sandbox: importing {args[0]} refused")
        elif event in PATH_EVENTS:
            for index in PATH_EVENTS[event]:
                if index < len(args) and not inside(args[index]):
                    raise PermissionError(f"sandbox: {event} outside its folder")
        elif event == "os.kill" and args and args[0] not in (0, own_pid, os.getpid()):
            raise PermissionError("sandbox: signalling other processes refused")

    code = compile(source, PROGRAM, "exec")
    lines: dict[int, list] = {}
    sys.addaudithook(hook)
    if settings["line-profile"]:
        sys.settrace(line_tracer(lines))
    status, error = "passed", ""
    scope = {"__name__": "__main__", "__file__": PROGRAM}
    call = settings["call"]
    start = time.monotonic()
    try:
        if call:  # define untimed, then time only the call (the tests)
            exec(code, scope)
            start = time.monotonic()
            exec(compile(call, "<call>", "exec"), scope)
        else:
            exec(code, scope)
    except AssertionError as caught:
        status, error = "failed", short(caught)
    except SystemExit as caught:  # leaving early would skip the tests
        status, error = "error", f"the program called exit({caught.code!r})"
    except BaseException as caught:  # noqa: BLE001  (report everything it raises)
        status, error = "error", short(caught)
    end = time.monotonic()
    sys.settrace(None)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if os.getpid() != own_pid:  # a forked child of the program: only the run reports
        os._exit(0 if status == "passed" else 1)
    report = {
        "status": status,
        "error": error,
        "start": start,
        "end": end,
        "hwm-kib": peak_kib(),
        "net-namespace": own_net != settings["parent-net"],
        "lines": top_lines(lines, settings["top-lines"]),
    }
    out.write(json.dumps(report))
    out.flush()
    os._exit(0)


def short(error: BaseException) -> str:
    """The exception's last line and the program line it came from."""
    frames = [
        f for f in traceback.extract_tb(error.__traceback__) if f.filename == PROGRAM
    ]
    where = f" (line {frames[-1].lineno})" if frames else ""
    text = "".join(traceback.format_exception_only(type(error), error)).strip()
    return text[-500:] + where


def peak_kib() -> int:
    """VmHWM: the process's peak resident set so far, exact (the kernel's own)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def line_tracer(lines: dict) -> object:
    """A `sys.settrace` tracer: per line of the program, hits and seconds."""
    clock = time.perf_counter

    def tracer(frame, event, arg):  # noqa: ANN001, ANN202
        if frame.f_code.co_filename != PROGRAM:
            return None
        last = [frame.f_lineno, clock()]

        def local(frame, event, arg):  # noqa: ANN001, ANN202
            now = clock()
            entry = lines.setdefault(last[0], [0, 0.0])
            entry[1] += now - last[1]
            if event == "line":
                lines.setdefault(frame.f_lineno, [0, 0.0])[0] += 1
            last[0] = frame.f_lineno
            last[1] = clock()
            return local

        return local

    return tracer


def top_lines(lines: dict, count: int) -> list:
    ranked = sorted(
        ((line, entry) for line, entry in lines.items() if line > 0),
        key=lambda item: -item[1][1],
    )[:count]
    return [[line, hits, seconds] for line, (hits, seconds) in ranked]


if __name__ == "__main__":
    main()
