"""A determined student against ``labkit grade``: every attack scores 0 and harms nobody else.

Each submission below is built from the released workbook of the 3-exercise fixture
(tests/fixtures/grading/01_basics.ipynb) with an attack inside a *solution* cell -- the only
code grading runs -- next to a wrong answer, so a point gained is a point the attack won. They
are graded in ONE ``labkit grade -j 2`` run, in the sandbox, together with a solved and a blank
workbook that must come out 6/6 and 0/6 whatever the attackers did.

The sandbox needs bubblewrap (``apt-get install bubblewrap``); without it these tests skip,
unless ``LABKIT_SANDBOX_TEST=1`` (CI) makes a missing sandbox a failure.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import os
import socket
import threading
import time
from pathlib import Path

import nbformat
import pytest

from labkit.grading import sandbox
from labkit.grading.gradebook import grade
from labkit.grading.source import nbgrader_meta, read_notebook
from labkit.grading.workbook import release_notebook

FIXTURE = Path(__file__).parent / "fixtures" / "grading" / "01_basics.ipynb"
GRADING = Path(sandbox.__file__).resolve().parent
WRONG = "def mean(xs):\n    return 0.0\n"
RIGHT = "def mean(xs):\n    return sum(xs) / len(xs)\n"


def _need_sandbox():
    if not sandbox.available():
        if os.environ.get("LABKIT_SANDBOX_TEST") == "1":
            pytest.fail("bubblewrap cannot make a sandbox here (LABKIT_SANDBOX_TEST=1)")
        pytest.skip("no bubblewrap sandbox on this machine (apt-get install bubblewrap)")


def _cell(nb, grade_id):
    return next(c for c in nb.cells if nbgrader_meta(c).get("grade_id") == grade_id)


def _attacks(paths: dict[str, str], port: int) -> dict[str, str]:
    """Attack name -> the source of the ex1-mean solution cell (ex2 and ex3 are solved)."""
    return {
        "ipython_hooks": WRONG
        + (
            "from IPython import get_ipython\nip = get_ipython()\n"
            "if ip is not None:\n"
            "    ip.set_custom_exc((AssertionError,), lambda *a, **k: None)\n"
            "    ip.input_transformers_cleanup.append(lambda lines: ['pass\\n'])\n"
            "    ip.events.register('pre_run_cell', lambda *a: None)\n"
            "import sys\nsys.excepthook = lambda *a: None\n"
        ),
        "always_equal": (
            "class Yes(float):\n    def __eq__(self, other):\n        return True\n"
            "    __hash__ = float.__hash__\n    def __bool__(self):\n        return True\n"
            "def mean(xs):\n    return Yes(0.0)\n"
        ),
        "guard_snapshot": WRONG
        + (
            "for k in [k for k in globals() if 'labkit' in k or k.startswith('_')]:\n"
            "    globals().pop(k, None)\n"
        ),
        "forged_report": WRONG
        + (
            "import json, os\n"
            f"for d in ['.', '/tmp', {paths['out']!r}, {paths['root']!r},\n"
            "          os.path.expanduser('~')]:\n"
            "    for name in ['report.json', 'report.jsonl', 'gradebook.csv', 'result.json']:\n"
            "        try:\n"
            "            with open(os.path.join(d, name), 'w') as fh:\n"
            "                fh.write(json.dumps({'ex1-mean': 'passed', 'forged': True}))\n"
            "        except OSError:\n"
            "            pass\n"
        ),
        "daemon_writer": WRONG
        + (
            "import os, threading, time\n"
            "def forge():\n"
            "    for _ in range(100):\n"
            "        try:\n"
            f"            with open({paths['csv']!r}, 'a') as fh:\n"
            "                fh.write('FORGED-ROW,01_basics.ipynb,1,2,3,6,6,ok,,0,\\n')\n"
            "        except OSError:\n"
            "            pass\n"
            "        time.sleep(0.05)\n"
            "threading.Thread(target=forge, daemon=True).start()\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            "    time.sleep(3)\n"
            "    forge()\n"
            "    os._exit(0)\n"
        ),
        "swap_code": WRONG + "np.mean.__code__ = (lambda *a, **k: 0.0).__code__\n",
        "overwrite_grader": WRONG
        + (
            "import os\n"
            f"for f in {sorted(paths['grader_files'])!r}:\n"
            "    try:\n"
            "        os.chmod(f, 0o666)\n"
            "    except OSError:\n"
            "        pass\n"
            "    try:\n"
            "        with open(f, 'w') as fh:\n"
            "            fh.write('raise SystemExit(0)\\n')\n"
            "    except OSError:\n"
            "        pass\n"
        ),
        "kill_grader": WRONG
        + (
            "import os, signal\n"
            "for pid in os.listdir('/proc'):\n"
            "    if not pid.isdigit() or int(pid) == os.getpid():\n"
            "        continue\n"
            "    try:\n"
            "        cmd = open(f'/proc/{pid}/cmdline', 'rb').read()\n"
            "        if b'labkit' in cmd or b'pytest' in cmd:\n"
            "            os.kill(int(pid), signal.SIGKILL)\n"
            "    except OSError:\n"
            "        pass\n"
            "for target in (os.getppid(), -os.getpgid(0)):\n"
            "    try:\n"
            "        os.kill(target, signal.SIGKILL) if target > 1 else None\n"
            "    except OSError:\n"
            "        pass\n"
        ),
        "garble_protocol": RIGHT
        + (
            "import os\n"
            "for fd in range(3, 64):\n"
            "    try:\n"
            "        os.write(fd, b'\\xff\\xfe{\"passed\": true}' * 64)\n"
            "    except OSError:\n"
            "        pass\n"
        ),
        "read_hidden_tests": (
            "def mean(xs):\n"
            f"    for p in ({paths['source']!r}, {paths['repo_notebooks']!r}):\n"
            "        open(p).read() if p.endswith('.ipynb') else __import__('os').listdir(p)\n"
            "    return sum(xs) / len(xs)\n"
        ),
        "network": (
            "import socket\n"
            "def mean(xs):\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=2).close()\n"
            "    return sum(xs) / len(xs)\n"
        ),
        "fake_passed_lines": WRONG
        + (
            "print('tests/01_basics.ipynb::Cell 3 PASSED')\n"
            'print(\'{"nodeid": "Cell 3", "outcome": "passed"}\')\n'
        ),
        "nested_answer": (
            "def mean(xs):\n    a = [sum(xs) / len(xs)]\n"
            "    for _ in range(100000):\n        a = [a]\n    return a\n"
        ),
        "deep_json_frame": (
            "import os\n"
            "def mean(xs):\n"
            "    body = b'{\"body\": ' + b'[' * 300000 + b']' * 300000 + b', \"blobs\": 0}'\n"
            "    frame = len(body).to_bytes(8, 'big') + body\n"
            "    for fd in range(3, 64):\n"
            "        try:\n"
            "            os.write(fd, frame)\n"
            "        except OSError:\n"
            "            pass\n"
            "    return sum(xs) / len(xs)\n"
        ),
        "exit_process": "import os\nos._exit(3)\n" + RIGHT,
        "sys_exit": "raise SystemExit(0)\n" + RIGHT,
        "memory_bomb": RIGHT + "hog = bytearray(8 << 30)\n",
        "output_flood": RIGHT + "for _ in range(20000):\n    print('x' * 5000)\n",
    }


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    _need_sandbox()
    tmp = tmp_path_factory.mktemp("attacks")
    source = read_notebook(FIXTURE)
    workbook = release_notebook(source, FIXTURE.name)
    solved = copy.deepcopy(workbook)
    for gid in ("ex1-mean", "ex2-softmax", "ex3-topk"):
        _cell(solved, f"{gid}-solution").source = _cell(source, f"{gid}-solution").source
    grader_files = [str(p) for p in GRADING.glob("*.py")]
    hashes = {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in grader_files}
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    connected = []
    threading.Thread(target=lambda: connected.append(server.accept()), daemon=True).start()
    paths = {
        "out": str(tmp / "out"), "root": str(tmp), "csv": str(tmp / "out" / "gradebook.csv"),
        "grader_files": grader_files, "source": str(FIXTURE.resolve()),
        "repo_notebooks": str(FIXTURE.resolve().parent.parent.parent.parent / "notebooks"),
    }  # fmt: skip
    subs = {"solved": solved, "blank": workbook}
    for name, code in _attacks(paths, server.getsockname()[1]).items():
        nb = copy.deepcopy(solved)
        _cell(nb, "ex1-mean-solution").source = code
        subs[name] = nb
    leak = copy.deepcopy(solved)  # reflects the hidden test's inputs in its error message
    _cell(leak, "ex2-softmax-solution").source = (
        "def softmax(x):\n    x = np.asarray(x, dtype=float)\n"
        "    if x.max() > 100:\n        raise ValueError(f'LEAK {x.tolist()}')\n"
        "    z = np.exp(x - x.max())\n    return z / z.sum()\n"
    )
    subs["exfiltrate"] = leak
    later = copy.deepcopy(solved)  # keeps the hidden inputs, shows them in a later visible test
    _cell(later, "ex2-softmax-solution").source = (
        "seen = []\n"
        "def softmax(x):\n    seen.append(list(x))\n"
        "    with open('/tmp/seen.txt', 'a') as fh:\n        fh.write(repr(list(x)))\n"
        "    x = np.asarray(x, dtype=float)\n"
        "    z = np.exp(x - x.max())\n    return z / z.sum()\n"
    )
    show = (
        "def topk_mask(x, k):\n"
        "    raise ValueError(f'LEAK {seen} {open(\"/tmp/seen.txt\").read()}')\n"
    )
    _cell(later, "ex3-topk-solution").source = show
    subs["exfiltrate_later"] = later
    for name, nb in subs.items():
        (tmp / "subs" / name).mkdir(parents=True)
        nbformat.write(nb, str(tmp / "subs" / name / FIXTURE.name))
    start = time.perf_counter()
    rows = grade(
        sorted((tmp / "subs").iterdir()), [FIXTURE], tmp / "out" / "gradebook.csv", jobs=2,
        cell_timeout=10, timeout=120, memory_gb=2, verbose=False,
    )  # fmt: skip
    wall = time.perf_counter() - start
    time.sleep(4)  # the forked daemon's moment to write
    server.close()
    text = (tmp / "out" / "gradebook.csv").read_text()
    table = {r["submission"]: r for r in csv.DictReader(text.splitlines())}
    feedback = {p.parent.name: p.read_text() for p in (tmp / "out" / "feedback").glob("*/*.md")}
    return {
        "rows": {r.submission: r for r in rows}, "table": table, "csv": text, "tmp": tmp,
        "feedback": feedback, "hashes": hashes, "connected": connected, "wall": wall,
    }  # fmt: skip


ATTACKS = [
    "ipython_hooks", "always_equal", "guard_snapshot", "forged_report", "daemon_writer",
    "swap_code", "overwrite_grader", "kill_grader", "garble_protocol", "read_hidden_tests",
    "network", "fake_passed_lines", "nested_answer", "deep_json_frame", "exit_process", "sys_exit",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", ATTACKS)
def test_an_attack_in_a_solution_cell_earns_nothing(attacked, name):
    row = attacked["rows"][name]
    assert row.tests["ex1-mean"].earned == 0, (name, row.tests["ex1-mean"])
    assert row.tests["ex2-softmax"].earned == 2 and row.tests["ex3-topk"].earned == 3, (
        name, row.tests, row.notes,
    )  # fmt: skip
    assert attacked["table"][name]["total"] == "5"


@pytest.mark.slow
def test_the_rest_of_the_class_is_graded_as_if_no_attacker_were_there(attacked):
    table = attacked["table"]
    assert table["solved"]["total"] == "6" and table["solved"]["status"] == "ok"
    assert table["blank"]["total"] == "0"
    expected = {"solved", "blank", *ATTACKS, "memory_bomb", "output_flood", "exfiltrate"}
    assert set(table) == expected | {"exfiltrate_later"}
    assert "FORGED-ROW" not in attacked["csv"], "the daemons could not touch the gradebook"
    for name in ("report.json", "result.json", "report.jsonl"):
        assert not (attacked["tmp"] / "out" / name).exists()
        assert not (attacked["tmp"] / name).exists()
    for path, digest in attacked["hashes"].items():
        assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == digest, path


@pytest.mark.slow
def test_no_network_no_source_and_no_signals_reach_out_of_the_sandbox(attacked):
    assert attacked["connected"] == [], "the sandbox reached a socket on the host's loopback"
    fb = attacked["feedback"]["read_hidden_tests"]
    assert "FileNotFoundError" in fb or "PermissionError" in fb, fb
    assert attacked["rows"]["kill_grader"].status == "ok"


@pytest.mark.slow
def test_runaway_memory_output_and_exits_cost_at_most_their_own_cell(attacked):
    rows = attacked["rows"]
    assert rows["memory_bomb"].total == 6 and "MemoryError" in attacked["feedback"]["memory_bomb"]
    assert rows["output_flood"].total == 6
    assert "ended your process" in attacked["feedback"]["exit_process"]
    assert "SystemExit" in attacked["feedback"]["sys_exit"]
    print(f"{len(rows)} submissions in {attacked['wall']:.1f} s with -j 2")


@pytest.mark.slow
def test_hidden_test_inputs_do_not_leak_through_the_students_error_messages(attacked):
    row = attacked["rows"]["exfiltrate"]
    assert row.tests["ex2-softmax"].earned == 0 and row.total == 4
    feedback = attacked["feedback"]["exfiltrate"]
    assert "ValueError raised by your code in a hidden test (message not shown)" in feedback
    assert "LEAK" not in feedback and "1000" not in feedback
    later = attacked["feedback"]["exfiltrate_later"]  # the visible inputs it saw may show
    assert attacked["rows"]["exfiltrate_later"].total == 3, later
    assert "LEAK" in later and "1000" not in later, "a hidden test's inputs reached feedback"


def test_grading_refuses_without_a_sandbox_unless_told(tmp_path, monkeypatch):
    monkeypatch.setattr(sandbox, "available", lambda: False)
    with pytest.raises(ValueError, match="--no-sandbox grades anyway: without a sandbox"):
        grade([tmp_path], [FIXTURE], tmp_path / "gradebook.csv", verbose=False)
    assert not (tmp_path / "gradebook.csv").exists()


FILL = """
import os
wrote = {}
for d in ("/tmp", "/dev/shm", "/dev"):
    wrote[d] = 0
    try:
        for i in range(4):
            with open(f"{d}/fill{i}", "wb") as fh:
                for _ in range(256):
                    fh.write(b"\\0" * (1 << 20))
                    wrote[d] += 1 << 20
    except OSError:
        pass
    for i in range(4):
        try:
            os.remove(f"{d}/fill{i}")
        except OSError:
            pass
import multiprocessing
multiprocessing.Lock()  # needs /dev/shm: it still works once the filler is gone
print(wrote)
"""


def test_memory_backed_folders_cannot_fill_the_machines_memory():
    """/tmp and /dev/shm are tmpfs, in RAM but outside the heap limit: they have a size."""
    _need_sandbox()
    import ast
    import subprocess
    import sys

    cmd = sandbox.bwrap_command([sys.executable, "-c", FILL], {"PATH": "/usr/bin:/bin"})
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    wrote = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    assert wrote["/tmp"] <= sandbox.TMP_BYTES, wrote
    assert wrote["/dev/shm"] <= sandbox.SHM_BYTES, wrote
    assert wrote["/dev"] == 0, wrote


def test_a_failure_in_a_hidden_test_shows_only_the_tests_own_words():
    """An assertion's message may show the student's answer, which can echo the hidden inputs."""
    from labkit.grading.verdict import _run_here, _test_message

    source = (
        "out = echo([1, 2])\nassert out == [1, 2], f'visible: got {out}'\n"
        "### BEGIN HIDDEN TESTS\nout = echo([7919, 104729])\n"
        "assert out == [], f'got {out}'\n### END HIDDEN TESTS\n"
    )
    visible = source.replace("[1, 2], f'", "[], f'", 1)
    hint = source.replace("f'got {out}'", "'a hint, written in the test'")
    messages = []
    for code in (visible, source, hint):
        try:
            _run_here(code, {"echo": lambda xs: xs}, 7)
        except AssertionError as err:
            messages.append(_test_message(err, code, 7))
    assert messages[0] == "AssertionError: visible: got [1, 2]"
    assert messages[1] == "AssertionError in a hidden test (message not shown)"
    assert "7919" not in messages[1]
    assert messages[2] == "AssertionError: a hint, written in the test"
