"""The simulator benchmark runs end to end (on the toy simulator, which needs no physics)."""

from pirl.bench import envs as bench


def test_bench_prints_a_row_per_configuration(capsys):
    rows = bench.main(["--sims", "toy", "--max-procs", "2", "--seconds", "0.3", "--size", "16"])
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("toy", False, 1),
        ("toy", False, 2),
        ("toy", True, 1),
        ("toy", True, 2),
    ]
    assert all(r[3] > 0 for r in rows)
    assert rows[0][4] == 1.0 and rows[2][4] == 1.0  # efficiency of P=1 against itself
    out = capsys.readouterr().out
    assert all(0 <= r[5] <= 1.05 and 0 <= r[6] <= 1.05 for r in rows)  # time shares of a worker
    assert "steps/s" in out and "efficiency" in out and "run queue" in out and out.count("toy") == 4


def test_a_simulator_without_its_assets_is_skipped_with_the_reason(capsys, monkeypatch, tmp_path):
    from pirl.envs import libero

    monkeypatch.setenv(libero.ASSETS_ENV, str(tmp_path))  # a folder without LIBERO's scenes
    rows = bench.main(["--sims", "libero", "toy", "--max-procs", "1", "--seconds", "0.2", "--size", "16"])
    assert {r[0] for r in rows} == {"toy"}
    out = capsys.readouterr().out
    assert f"libero     skipped: LIBERO assets dir '{tmp_path}' ($PIRL_LIBERO_ASSETS) has no 'scenes' folder" in out
