"""labkit.bench: claims, the notebook runner, and the README table rendered from docs/bench.json."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from labkit import bench

ROOT = Path(__file__).resolve().parent.parent


def _result(**over):
    result = {
        "machine": {
            "cpu": "Test CPU",
            "cores": 2,
            "python": "3.11.7",
            "torch": "2.14.1",
            "kernel_set": "native",
            "capability": "AVX512",
        },
        "date": "2026-01-01",
        "prepare_seconds": 200.0,
        "notebooks": [
            {
                "notebook": "00_a",
                "seconds": 12.34,
                "claims": [
                    {"key": "ratio", "value": 3.999, "label": "bytes ratio", "fmt": "{:.1f}x"}
                ],
            },
            {"notebook": "01_b", "seconds": 40.0, "claims": []},
        ],
        "total_seconds": 252.3,
    }
    result.update(over)
    return result


def test_claim_is_silent_and_appends_json_lines(tmp_path, monkeypatch, capsys):
    target = tmp_path / "claims.jsonl"
    monkeypatch.setenv("LABKIT_BENCH_FILE", str(target))
    bench.claim("int8_speedup", 2.5, "int8 speedup", "{:.2f}x")
    bench.claim("kd_gap", 0.25, "KD gap closed", "{:.0%}")
    assert capsys.readouterr().out == ""
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r["key"] for r in lines] == ["int8_speedup", "kd_gap"]
    assert lines[1]["fmt"].format(lines[1]["value"]) == "25%"
    keys = [c["key"] for c in bench.claims()]
    assert keys[-2:] == ["int8_speedup", "kd_gap"]


def test_claim_without_bench_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("LABKIT_BENCH_FILE", raising=False)
    monkeypatch.chdir(tmp_path)
    bench.claim("alone", 1.0, "alone")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args, name",
    [
        (("Bad Key", 1.0, "x"), "key"),
        (("", 1.0, "x"), "key"),
        (("ok", "many", "x"), "value"),
        (("ok", None, "x"), "value"),
        (("ok", 1.0, "x", "{:d}"), "fmt"),
        (("ok", 1.0, "x", "{0} {1}"), "fmt"),
    ],
)
def test_claim_rejects_bad_input(args, name):
    with pytest.raises(ValueError, match=rf"^{name} must"):
        bench.claim(*args)


def test_render_table_formats_every_notebook_and_the_totals():
    table = bench.render_table(_result())
    lines = table.splitlines()
    assert lines[0].startswith("| notebook | runtime |")
    assert "| `00_a` | 12 s | bytes ratio 4.0x |" in lines
    assert "| `01_b` | 40 s | — |" in lines
    assert "cold `labkit prepare` 200 s + notebooks 52 s = **252 s**" in table
    assert "Test CPU, 2 cores" in table and "kernel set native (AVX512)" in table
    warm = bench.render_table(_result(prepare_seconds=None))
    assert "notebooks 52 s with the model cache built" in warm and "cold" not in warm


def _on(kernel_set, capability, ratio, zoo):
    r = _result(zoo=zoo, total_seconds=300.0 if kernel_set == "default" else 252.3)
    r["machine"] = {**r["machine"], "kernel_set": kernel_set, "capability": capability}
    r["notebooks"][0]["claims"][0]["value"] = ratio
    return r


def test_combine_reports_each_kernel_set_and_the_spread():
    runs = [
        _on(
            "native",
            "AVX512",
            3.999,
            {"gpt/pydoc": {"val_loss": 1.40}, "mlp/d": {"test_acc": 0.95}},
        ),
        _on("avx2", "AVX2", 3.5, {"gpt/pydoc": {"val_loss": 1.41}, "mlp/d": {"test_acc": 0.93}}),
        _on(
            "default",
            "DEFAULT",
            4.2,
            {"gpt/pydoc": {"val_loss": 1.45}, "mlp/d": {"test_acc": 0.95}},
        ),
    ]
    runs[0]["zoo"]["mlp/d"]["val_loss"] = 0.1  # a classifier is judged by its test accuracy only
    runs[1]["zoo"]["mlp/d"]["val_loss"] = 0.9
    result = bench.combine(runs)
    assert result["notebooks"] == runs[0]["notebooks"]  # the table's own figures: the first run
    assert [k["kernel_set"] for k in result["kernel_sets"]] == ["native", "avx2", "default"]
    assert result["kernel_sets"][2]["claims"] == {"00_a": {"ratio": 4.2}, "01_b": {}}
    spread = bench.spread(result["kernel_sets"])
    zoo = spread["zoo"]
    assert zoo["gpt/pydoc"]["val_loss"]["spread"] == pytest.approx(0.05)
    assert zoo["gpt/pydoc"]["val_loss"]["within"] is False  # 0.05 > 0.03 nats/char
    assert list(zoo["mlp/d"]) == ["test_acc"] and zoo["mlp/d"]["test_acc"]["within"] is False
    runs[1]["zoo"]["mlp/d"]["test_acc"] = 0.945  # within 1 point now
    assert bench.spread(bench.combine(runs)["kernel_sets"])["zoo"]["mlp/d"]["test_acc"]["within"]
    assert spread["claims"]["00_a/ratio"] == {"min": 3.5, "max": 4.2}
    table = bench.render_table(result)
    assert "| `00_a` | 12 s | bytes ratio 4.0x (3.5x – 4.2x) |" in table
    assert "| `gpt/pydoc` | val_loss | 1.400 | 1.410 | 1.450 | 0.050 (0.03) |" in table
    assert "| `mlp/d` | test_acc | 95.0% | 93.0% | 95.0% | 2.0 pt (1) |" in table
    assert "avx2 (AVX2) 252 s" in table and "default (DEFAULT) 300 s" in table
    runs[2]["notebooks"][0]["claims"][0]["value"] = 3.96  # prints as 4.0x too: no range shown
    runs[1]["notebooks"][0]["claims"][0]["value"] = 4.01
    assert "| bytes ratio 4.0x |" in bench.render_table(bench.combine(runs))
    with pytest.raises(ValueError, match="^results must hold"):
        bench.combine([])


def test_the_zoo_agrees_across_kernel_sets_in_the_committed_bench():
    """The committed course figures were measured on every kernel set, and each pretrained model's
    headline metric stayed within its tolerance across them."""
    from labkit import models

    result = json.loads((ROOT / "docs" / "bench.json").read_text())
    sets = [k["kernel_set"] for k in result.get("kernel_sets", [])]
    assert {"native", "default"} <= set(sets), "re-run `make bench` (all kernel sets)"
    zoo = bench.spread(result["kernel_sets"])["zoo"]
    assert set(zoo) == {f"{n}/{d}" for n, d in models.RECIPES}
    off = {e: m for e, ms in zoo.items() for k, m in ms.items() if not m["within"]}
    assert not off, f"pretrained models that move more than ZOO_TOLERANCE between kernels: {off}"


def test_cli_rejects_unknown_kernel_sets(capsys):
    from labkit import cli

    assert cli.main(["bench", "--kernels", "native,avx9"]) == 2
    assert "kernels must be one of" in capsys.readouterr().err
    assert cli.main(["bench", "--kernels", "native,default"]) == 2  # without --cold
    assert "need --cold" in capsys.readouterr().err


def test_update_readme_replaces_only_the_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# T\nbefore\n{bench.BEGIN}\nold table\n{bench.END}\nafter\n")
    assert bench.update_readme(readme, "| new |") is True
    assert readme.read_text() == f"# T\nbefore\n{bench.BEGIN}\n| new |\n{bench.END}\nafter\n"
    assert bench.table_in(readme) == "| new |"
    assert bench.update_readme(readme, "| new |") is False  # unchanged: not rewritten


@pytest.mark.parametrize(
    "text",
    ["no markers", f"{bench.END}\nx\n{bench.BEGIN}", f"{bench.BEGIN}{bench.BEGIN}{bench.END}"],
)
def test_update_readme_needs_one_marker_block(tmp_path, text):
    readme = tmp_path / "README.md"
    readme.write_text(text)
    with pytest.raises(ValueError, match="^readme must hold one"):
        bench.update_readme(readme, "| t |")
    assert readme.read_text() == text  # nothing half-written


def _notebook(path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, path)
    return path


@pytest.mark.slow
def test_run_notebook_collects_claims_and_time(tmp_path):
    path = _notebook(
        tmp_path / "00_tiny.ipynb",
        "from labkit import bench\nimport time\ntime.sleep(0.3)",
        "bench.claim('answer', 41, 'the answer')\nbench.claim('answer', 42, 'the answer')",
        "bench.claim('ratio', 0.5, 'a ratio', '{:.0%}')",
    )
    before = path.read_bytes()
    record = bench.run_notebook(path)
    assert record["notebook"] == "00_tiny" and record["seconds"] >= 0.3
    assert [(c["key"], c["value"]) for c in record["claims"]] == [("answer", 42.0), ("ratio", 0.5)]
    assert path.read_bytes() == before  # the notebook file is not modified
    bad = _notebook(tmp_path / "01_bad.ipynb", "raise KeyError('boom')")
    with pytest.raises(RuntimeError, match="01_bad.ipynb failed"):
        bench.run([path, bad])
    with pytest.raises(ValueError, match="^path must be an existing notebook"):
        bench.run_notebook(tmp_path / "missing.ipynb")


def test_readme_table_is_rendered_from_the_committed_bench_result():
    result = json.loads((ROOT / "docs" / "bench.json").read_text())
    assert bench.table_in(ROOT / "README.md") == bench.render_table(result)
    ran = [r["notebook"] for r in result["notebooks"]]
    assert ran == [p.stem for p in bench.course_notebooks()], "re-run `make bench`"
    assert result["prepare_seconds"] is not None, "the committed table is a cold run"


@pytest.mark.parametrize("path", bench.course_notebooks(), ids=lambda p: p.stem)
def test_every_course_notebook_claims_headline_figures(path):
    nb = nbformat.read(path, as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert any("bench.claim(" in s for s in code), f"{path.name} claims no headline figure"
    assert not any(s.startswith("# NBVAL_CHECK_OUTPUT") and "bench.claim(" in s for s in code)


def test_the_exams_claim_nothing_and_the_bench_leaves_them_out():
    everything = bench.course_notebooks(exams=True)
    exams = [p for p in everything if bench.is_exam(p)]
    assert [p.stem for p in exams] == ["98_practice_exam", "99_final_exam"]
    assert bench.course_notebooks() == [p for p in everything if p not in exams]
    for path in exams:  # an exam measures nothing: no headline figure to leave out
        code = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        assert not any("bench.claim(" in s for s in code), path.name
    assert not bench.is_exam("08_capstone.ipynb") and bench.is_exam(Path("x/99_final_exam.ipynb"))


@pytest.mark.slow
def test_cli_partial_run_reports_and_writes_nothing(tmp_path, capsys, monkeypatch):
    from labkit import cli

    monkeypatch.chdir(tmp_path)
    path = _notebook(
        tmp_path / "03_cli.ipynb", "from labkit import bench\nbench.claim('x', 2, 'x')"
    )
    assert cli.main(["bench", str(path)]) == 0
    out = capsys.readouterr().out
    assert "03_cli:" in out and "x=2" in out and "partial run" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["03_cli.ipynb"]
