"""python -m fastconv: options, output formats, the first-call table, notes for
missing peers, the chart. Each run here is a small subprocess on tiny workloads."""
import json
import os
import subprocess
import sys
import time

import pytest

from fastconv import __main__ as cli


def _run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "fastconv", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_help_documents_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    parser = cli._parser()
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(options) >= 9
    for action in options:
        assert action.help and "default" in action.help, action.dest
        assert action.option_strings[0] in text


def test_json_rows_speed_ups_and_first_calls():
    done = _run("--quick", "--json", "--dtype", "float32", "--ops", "batch_outer_hadamard,softmax",
                "--budget", "0.02")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    rows = report["results"]
    assert {(r["op"], r["workload"]) for r in rows} == {
        ("batch_outer_hadamard", "pairs_2x3_of_50x60"), ("batch_outer_hadamard", "pairs_20x30_of_50x60"),
        ("softmax", "tiny_4x5")}
    for r in rows:
        assert r["agrees"] and r["dtype"] == "float32" and r["fastconv"] > 0
        assert r["speedup_over_reference"] == pytest.approx(r["reference"] / r["fastconv"])
        for peer in r["peers"].values():
            assert peer["speedup"] == pytest.approx(peer["seconds"] / r["fastconv"])
        assert "numpy_broadcast" in r["peers"] or r["op"] == "softmax"
    assert {f["op"] for f in report["first_calls"]} == {"batch_outer_hadamard", "softmax"}
    for f in report["first_calls"]:
        assert f["seconds"] >= 0 and f["cold"] == (f["compilations"] > 0)


def test_a_cold_cache_is_flagged(tmp_path):
    done = _run("--quick", "--json", "--dtype", "float64", "--ops", "softmax", "--budget", "0.01",
                env={"NUMBA_CACHE_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    (first,) = json.loads(done.stdout)["first_calls"]
    assert first["cold"] and first["compilations"] >= 1


def test_text_and_markdown_tables_use_one_convention():
    rows = [dict(op="softmax", workload="tiny_4x5", about="", dtype="float32", fastconv=1e-6,
                 reference=4e-6, reference_scaled=False, speedup_over_reference=4.0, agrees=True,
                 peers={"numpy": dict(seconds=2e-6, speedup=2.0)})]
    first = [dict(op="softmax", dtype="float32", seconds=0.5, compilations=3, cold=True)]
    for markdown in (False, True):
        text = "\n".join(cli._table(rows, first, markdown))
        assert "4.0x" in text and "numpy 2 µs (2.00x)" in text
        assert "cold: 3 compilations" in text and "500 ms" in text
    assert "| softmax | tiny_4x5 |" in "\n".join(cli._table(rows, first, True))


def test_a_missing_peer_is_noted(monkeypatch, capsys):
    from fastconv import _registry

    def missing():
        raise NotImplementedError("torch is not installed")
    monkeypatch.setattr(_registry, "torch_module", missing)
    assert cli.main(["--quick", "--dtype", "float32", "--ops", "softmax", "--budget", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "not measured - torch: torch is not installed (softmax tiny_4x5)" in out


def test_unknown_operation_and_list(capsys):
    assert cli.main(["--ops", "conv3d"]) == 2
    assert "unknown operation(s) conv3d" in capsys.readouterr().err
    assert cli.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "resnet_1x64x56x56_k3" in out and "a ResNet layer, batch 1" in out


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "speedups.png"
    rows = [dict(op="conv2d", workload="w", dtype="float32", speedup_over_reference=10.0,
                 peers={"torch": dict(seconds=1.0, speedup=1.2)}),
            dict(op="im2col", workload="v", dtype="float32", speedup_over_reference=3.0, peers={})]
    cli.plot(rows, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("budget, calls", [(0.02, 4), (0.001, 2)])
def test_steady_median_outlasts_a_slow_second_call(budget, calls):
    """The first two calls are slow (as a process's first large results are on a
    VM): three timed calls give the steady time where they fit in ten budgets."""
    seconds = iter([0.05, 0.05] + [0.001] * 100)
    made = []

    def call():
        made.append(1)
        time.sleep(next(seconds))

    median = cli.steady_median(call, budget)[0]
    assert len(made) >= calls
    if calls == 4:
        assert median < 0.02
    else:
        assert len(made) == 2 and median >= 0.05
