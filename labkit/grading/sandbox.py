"""Start the student's side of grading in a sandbox: bubblewrap, resource limits, its own session.

:func:`start` runs ``python -m labkit.grading.student`` inside ``bwrap`` (Debian's
``bubblewrap``) with:

- **files**: read-only the system (``/usr``, ``/etc``, ...), this Python and its packages,
  labkit's own package folder and the data cache (``LABKIT_DATA``); writable only a fresh
  tmpfs ``/tmp`` that is its working folder and a small ``/dev/shm``, both of a fixed size
  (:data:`TMP_BYTES`, :data:`SHM_BYTES`: tmpfs is memory the heap limit does not count). The
  course notebooks, hidden tests, other submissions, the gradebook and the rest of the
  repository are not in its file system;
- **namespaces**: new user (uid/gid 65534), PID, network (no interface but loopback), IPC, UTS and
  cgroup namespaces, and a new session: it can see and signal only its own processes, reach no
  network, and cannot push keystrokes into the grader's terminal;
- **limits** (``setrlimit``, inherited): data segment, i.e. heap and anonymous memory maps
  (``memory_gb``), CPU seconds, file size,
  processes (not enforced by Linux for root), no core dumps; it dies with its parent
  (``--die-with-parent``) and is killed with its whole process group.

Without bubblewrap (or where user namespaces are off), grading refuses unless told
``sandbox=False`` (``labkit grade --no-sandbox``): the same process split and limits, but the
student's code then runs with the grader's user rights -- it can read that user's files, use
the network and signal that user's processes. Verdicts are still decided outside it.

Example:
    >>> available()                                              # doctest: +SKIP
    True
    >>> proc = start(sandbox=True, memory_gb=4, cpu_seconds=600)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

__all__ = ["available", "bwrap_command", "start", "stop", "NO_SANDBOX_MEANS"]

NO_SANDBOX_MEANS = (
    "without a sandbox the students' code runs with your user's rights: it can read your files "
    "(the course notebooks and hidden tests included), use the network and signal your processes"
)
# tmpfs lives in the machine's memory, outside the heap limit: without a size, a submission could
# fill half the RAM per mount and starve the grader and the other students' processes
TMP_BYTES = 512 << 20  # the student's /tmp (its working folder)
SHM_BYTES = 64 << 20  # /dev/shm, for multiprocessing's semaphores; the rest of /dev is read-only
_ENV_KEEP = ("LANG", "LC_ALL", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "ATEN_CPU_CAPABILITY",
             "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "LABKIT_GRADE_DEBUG")  # fmt: skip


def _package_dir() -> Path:
    return Path(__file__).resolve().parent.parent


def _read_only_paths() -> list[Path]:
    """What the student's Python needs to read: system, interpreter, packages, labkit, data."""
    from labkit.utils import data_dir

    paths = [Path(p) for p in ("/usr", "/etc", "/opt")]
    paths += [Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).resolve().parent]
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        paths.append(Path(sysconfig.get_paths()[key]))
    paths += [_package_dir(), Path(data_dir())]
    out: list[Path] = []
    for p in sorted({p.resolve() for p in paths if p.exists()}, key=lambda p: len(p.parts)):
        if not any(p == q or q in p.parents for q in out):
            out.append(p)
    return out


def bwrap_command(argv: list[str], env: dict[str, str]) -> list[str]:
    """The ``bwrap`` command line that runs ``argv`` sandboxed with exactly ``env``."""
    cmd = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session",
           "--uid", "65534", "--gid", "65534", "--proc", "/proc", "--dev", "/dev",
           "--size", str(SHM_BYTES), "--tmpfs", "/dev/shm", "--remount-ro", "/dev",
           "--size", str(TMP_BYTES), "--tmpfs", "/tmp", "--chdir", "/tmp",
           "--clearenv"]  # fmt: skip
    for p in _read_only_paths():
        cmd += ["--ro-bind", str(p), str(p)]
    for name in ("bin", "lib", "lib64", "sbin"):
        link = Path("/") / name
        if link.is_symlink():
            cmd += ["--symlink", os.readlink(link), str(link)]
        elif link.is_dir():
            cmd += ["--ro-bind", str(link), str(link)]
    for key, value in env.items():
        cmd += ["--setenv", key, value]
    return [*cmd, "--", *argv]


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Whether bubblewrap is installed and can make a sandbox on this machine."""
    if shutil.which("bwrap") is None:
        return False
    cmd = bwrap_command([sys.executable, "-c", "pass"], {})
    try:
        return subprocess.run(cmd, capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _limits(memory_gb: float, cpu_seconds: float) -> None:
    """In the child before exec: its own session, limits, and death with the parent."""
    gb = int(memory_gb * (1 << 30))
    for res, value in (
        (resource.RLIMIT_DATA, gb),  # heap and anonymous maps (AS would count torch's libraries)
        (resource.RLIMIT_CPU, int(cpu_seconds)),
        (resource.RLIMIT_FSIZE, 1 << 30),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NPROC, 512),
    ):
        try:
            resource.setrlimit(res, (value, value))
        except (ValueError, OSError):
            pass
    try:  # PR_SET_PDEATHSIG = 1: SIGKILL when the verdict process dies
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def start(*, sandbox: bool, memory_gb: float = 6.0, cpu_seconds: float = 3600) -> subprocess.Popen:
    """Start the student's process (sandboxed or not) with pipes on stdin/stdout."""
    from labkit.utils import data_dir

    env = {k: os.environ[k] for k in _ENV_KEEP if k in os.environ}
    env.update({"HOME": "/tmp", "TMPDIR": "/tmp", "MPLBACKEND": "Agg", "MPLCONFIGDIR": "/tmp/mpl",
                "PATH": "/usr/bin:/bin", "LABKIT_DATA": str(Path(data_dir()).resolve()),
                "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"})  # fmt: skip
    env["PYTHONPATH"] = str(_package_dir().parent)  # this labkit, also from a source checkout
    argv = [sys.executable, "-s", "-m", "labkit.grading.student"]
    cwd = None
    if sandbox:
        argv = bwrap_command(argv, env)
    else:
        import tempfile

        cwd = tempfile.mkdtemp(prefix="labkit-student-")
        env.update({"HOME": cwd, "TMPDIR": cwd, "MPLCONFIGDIR": os.path.join(cwd, "mpl"),
                    "PATH": os.environ.get("PATH", "/usr/bin:/bin")})  # fmt: skip
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env=env, cwd=cwd, start_new_session=True, close_fds=True,
        preexec_fn=functools.partial(_limits, memory_gb, cpu_seconds),
    )  # fmt: skip
    proc.labkit_tmp = cwd  # type: ignore[attr-defined]
    return proc


def stop(proc: subprocess.Popen) -> None:
    """Kill the student's process and its whole process group; reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for f in (proc.stdin, proc.stdout):
        try:
            if f:
                f.close()
        except OSError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    if getattr(proc, "labkit_tmp", None):
        shutil.rmtree(proc.labkit_tmp, ignore_errors=True)
