"""The simulator benchmark runs end to end (on the toy simulator, which needs no physics)."""

import os
import pathlib

import numpy as np

from pirl.bench import envs as bench
from pirl.bench import vs_gym
from pirl.envs import pool, toy


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


def test_worker_thread_env_leaves_rasterizing_to_the_drawing_thread():
    # LP_NUM_THREADS counts llvmpipe's rasterizer threads besides the drawing one (Mesa's
    # lp_rast.c, lp_rast_queue_scene: with 0 the calling thread rasterizes the scene itself);
    # every other pool gets the worker's count.
    env = pool.worker_thread_env(1)
    assert env["LP_NUM_THREADS"] == "0"
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "1"
    assert pool.worker_thread_env(4)["LP_NUM_THREADS"] == "3"


def test_pool_workers_start_with_the_thread_env():
    with pool.EnvPool(toy.ToyConfig(), pool.PoolConfig(1, 1)) as p:
        environ = pathlib.Path(f"/proc/{p.worker_pids()[0]}/environ").read_bytes().split(b"\0")
    assert b"LP_NUM_THREADS=0" in environ and b"OMP_NUM_THREADS=1" in environ


def test_vs_gym_counts_the_same_steps_on_both_sides(capsys):
    # The toy sim runs 10**9-step episodes here: every chunk executes all its steps on both sides.
    environ = dict(os.environ)
    rows = bench.main(["--vs-gym", "toy", "--max-procs", "2", "--seconds", "0.3", "--rounds", "2", "--size", "16"])
    assert [(r[0], r[1]) for r in rows] == [(False, 0), (True, 0)]
    assert all(r[2] > 0 and r[3] > 0 and abs(r[4] - r[2] / r[3]) < 1e-9 for r in rows)
    out = capsys.readouterr().out
    assert "AsyncVectorEnv" in out and "ratio" in out
    assert dict(os.environ) == environ  # the workers' thread settings were set only around spawning


def test_gym_chunk_env_ends_episodes_where_a_pool_worker_does():
    # max_steps = 7 with chunks of 5: the second chunk stops after 2 steps and reports truncation,
    # as worker.Worker.step does (steps >= spec.max_steps).
    env = vs_gym.ChunkEnvFactory(toy.ToyConfig(max_steps=7), 5, seed=0)()
    env.reset()
    actions = np.zeros((5, env.spec.action_dim), np.float32)
    _, _, term, trunc, info = env.step(actions)
    assert info["steps"] == 5 and not term and not trunc
    _, _, term, trunc, info = env.step(actions)
    assert info["steps"] == 2 and trunc and not term
    env.close()


def test_a_simulator_without_its_assets_is_skipped_with_the_reason(capsys, monkeypatch, tmp_path):
    from pirl.envs import libero

    monkeypatch.setenv(libero.ASSETS_ENV, str(tmp_path))  # a folder without LIBERO's scenes
    rows = bench.main(["--sims", "libero", "toy", "--max-procs", "1", "--seconds", "0.2", "--size", "16"])
    assert {r[0] for r in rows} == {"toy"}
    out = capsys.readouterr().out
    assert f"libero     skipped: LIBERO assets dir '{tmp_path}' ($PIRL_LIBERO_ASSETS) has no 'scenes' folder" in out
