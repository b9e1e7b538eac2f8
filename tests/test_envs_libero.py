"""LIBERO adapter: state layout, config writing, suites, and real envs through the pool."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("libero")

from envs_helpers import ROOT, NoJax, RenderEveryStep, assert_images_ok, chunk_observations

from pirl.envs import libero as lb
from pirl.envs import pool


def test_quat_to_axis_angle_hand_values():
    # A rotation by angle a about unit axis u is q = (u sin(a/2), cos(a/2)) in (x, y, z, w) order,
    # and its axis-angle vector is u * a.
    a = math.pi / 2
    np.testing.assert_allclose(lb.quat_to_axis_angle([0, 0, math.sin(a / 2), math.cos(a / 2)]), [0, 0, a])
    u = np.array([1.0, 2.0, 2.0]) / 3.0  # |u| = 1
    q = [*(u * math.sin(0.3)), math.cos(0.3)]  # angle 0.6
    np.testing.assert_allclose(lb.quat_to_axis_angle(q), u * 0.6, atol=1e-12)
    np.testing.assert_array_equal(lb.quat_to_axis_angle([0, 0, 0, 1]), [0, 0, 0])
    # Half turn about x: q = (1, 0, 0, 0) -> (pi, 0, 0).
    np.testing.assert_allclose(lb.quat_to_axis_angle([1, 0, 0, 0]), [math.pi, 0, 0])


def test_suites_and_union():
    assert lb.LiberoConfig(suite="libero_90", render=False).spec().num_tasks == 90
    union = lb.suite_tasks("libero_130")
    assert len(union) == 130 and union[0] == ("libero_spatial", 0) and union[40] == ("libero_90", 0)
    cfg = lb.LiberoConfig(suite="libero_130")
    assert cfg.task_max_steps(0) == 240 and cfg.task_max_steps(35) == 480 and cfg.spec().max_steps == 480
    assert lb.LiberoConfig(suite="libero_goal").spec().max_steps == 320
    with pytest.raises(ValueError, match="unknown LIBERO suite 'libero_11'"):
        lb.LiberoConfig(suite="libero_11")
    with pytest.raises(FileNotFoundError, match="has no 'scenes' folder"):
        lb.LiberoConfig(assets_dir="/nonexistent").resolved_assets_dir()


def test_config_lets_libero_import_without_a_prompt(tmp_path):
    path = lb.write_config(str(tmp_path))
    import yaml

    with open(path) as f:
        cfg = yaml.safe_load(f)
    assert set(cfg) == {"benchmark_root", "bddl_files", "init_states", "datasets", "assets"}
    assert os.path.isdir(cfg["bddl_files"]) and os.path.isdir(cfg["init_states"])
    # A fresh interpreter with no stdin imports LIBERO's benchmark through this config.
    code = "from libero.libero import benchmark; print(benchmark.get_benchmark_dict()['libero_goal']().n_tasks)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "LIBERO_CONFIG_PATH": str(tmp_path)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "10"


@pytest.mark.slow
@pytest.mark.libero_assets
def test_libero_envs_through_pool():
    cfg = lb.LiberoConfig(suite="libero_spatial", image_size=(64, 64), warmup_steps=5)
    with pool.EnvPool(NoJax(cfg), pool.PoolConfig(2, 1, gl="egl")) as p:
        assert p.spec.state_dim == 8 and p.spec.action_dim == 7 and p.spec.max_steps == 240
        # Env 1 first runs another init id, then both reset to one GRPO group id: the scene must not
        # depend on what the env did before.
        p.reset(np.array([[1, 0], [1, 1]]))
        p.step_chunk(np.tile(lb.NOOP, (2, 3, 1)))
        obs = p.reset(np.array([[1, 2], [1, 2]]))
        assert_images_ok(obs.images, ["main", "wrist"], (64, 64))
        np.testing.assert_array_equal(obs.images["main"][0], obs.images["main"][1])
        np.testing.assert_array_equal(obs.images["wrist"][0], obs.images["wrist"][1])
        np.testing.assert_array_equal(obs.state[0], obs.state[1])
        assert obs.instruction[0].startswith("pick up the black bowl")
        # State: eef position of the Panda above the table, axis-angle of norm <= 2 pi, two finger
        # joints of opposite sign (open gripper).
        s = obs.state[0]
        assert 0.5 < s[2] < 1.5 and np.linalg.norm(s[3:6]) <= 2 * math.pi + 1e-5 and s[6] > 0 > s[7]
        act = np.zeros((2, 5, 7), np.float32)
        act[:, :, 2] = 1.0  # move up
        r = p.step_chunk(act)
        assert r.valid.all() and not r.success.any() and not r.done.any()
        np.testing.assert_array_equal(r.episode_length, [5, 5])
        assert (r.obs.state[:, 2] > s[2] + 0.01).all()  # the end effector went up


@pytest.mark.libero_assets
def test_deferred_render_equals_rendering_every_step():
    """Cameras render once per chunk (and on an episode's last step); every observation the pool
    returns must equal that of sims rendering every step, the step-limit cut mid-chunk included."""
    cfg = lb.LiberoConfig(suite="libero_spatial", image_size=(32, 32), warmup_steps=3, max_steps=7)
    chunk = 3  # 7 steps = 3 + 3 + 1
    actions = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 3 * chunk, 7)).astype(np.float32)
    ids = np.array([[0, 0], [3, 1]])
    cfg_pool = pool.PoolConfig(2, 1, gl="egl")
    # then_reset: a second episode after the cut one starts alike.
    results = [
        chunk_observations(f, cfg_pool, ids, actions, chunk, then_reset=ids[::-1])
        for f in (NoJax(cfg), RenderEveryStep(cfg))
    ]
    for deferred, eager in zip(*results, strict=True):
        assert_images_ok(deferred.images, ["main", "wrist"], (32, 32))
        for cam in ("main", "wrist"):
            np.testing.assert_array_equal(deferred.images[cam], eager.images[cam])
        np.testing.assert_array_equal(deferred.state, eager.state)
    assert not np.array_equal(results[0][3].images["wrist"], results[0][2].images["wrist"])


@pytest.mark.slow
@pytest.mark.libero_assets
def test_success_when_the_goal_holds():
    """libero_goal task 0 is "open the middle drawer of the cabinet"; LIBERO calls the drawer open
    when its slide joint is below -0.14. Pulling the joint to -0.15 by hand must make the next step
    a success: reward 1, terminated; and a closed drawer must not."""
    cfg = lb.LiberoConfig(suite="libero_goal", render=False, warmup_steps=2)
    sim = lb.LiberoSim(cfg)
    try:
        obs, text = sim.reset(0, 0)
        assert text == "open the middle drawer of the cabinet" and obs.state.shape == (8,)
        out = sim.step(lb.NOOP)
        assert not out.success and out.reward == 0.0 and not out.terminated
        sim_ = sim.env.env.sim
        addr = sim_.model.get_joint_qpos_addr("wooden_cabinet_1_middle_level")
        sim_.data.qpos[addr] = -0.15
        sim_.forward()
        out = sim.step(lb.NOOP)
        assert out.success and out.terminated and out.reward == 1.0 and not out.truncated
    finally:
        sim.close()


def _pool_images(factory, ids, gl: str) -> dict:
    """The images after a reset of ``ids`` in ONE worker and one no-op step."""
    with pool.EnvPool(NoJax(factory), pool.PoolConfig(1, len(ids), gl=gl)) as p:
        p.reset(np.asarray(ids))
        return p.step_chunk(np.tile(lb.NOOP, (len(ids), 1, 1))).obs.images


@pytest.mark.slow
@pytest.mark.libero_assets
def test_sims_of_one_worker_render_their_own_scene():
    """Two sims of different scenes (a libero_spatial and a libero_object task) in one worker: each
    must draw its own scene, as it would alone, under osmesa and EGL (robosuite draws with the
    current GL context: the most recently created one, unless each sim makes its own current)."""
    cfg = lb.LiberoConfig(suite="libero_130", image_size=(32, 32), warmup_steps=0)
    for gl in ("osmesa", "egl"):
        together = _pool_images(cfg, [[0, 1], [10, 0]], gl)
        alone = _pool_images(cfg, [[0, 1]], gl)
        for cam in ("main", "wrist"):
            np.testing.assert_array_equal(together[cam][0], alone[cam][0])
        assert not np.array_equal(together["main"][0], together["main"][1])


def _fixtures(sim) -> np.ndarray:
    """Body positions of the sim's current model: LIBERO places its fixtures there, from numpy's
    global RNG, on every reset (the init state does not cover them)."""
    return np.array(sim.env.env.sim.model.body_pos)


@pytest.mark.libero_assets
def test_openpi_seeding_runs_each_tasks_trials_on_one_stream():
    """openpi examples/libero/main.py eval_libero: per task, _get_libero_env makes the env and calls
    env.seed(7) (LIBERO: np.random.seed), then episode k runs env.reset() and
    env.set_init_state(initial_states[k]) with no re-seeding. A sim with seed_every_reset=False
    must place fixtures exactly so, even with another sim resetting in the same process between
    its trials."""
    common = dict(suite="libero_spatial", render=False, warmup_steps=0, seed=7)
    a = lb.LiberoSim(lb.LiberoConfig(**common, seed_every_reset=False))
    b = lb.LiberoSim(lb.LiberoConfig(**common, seed_every_reset=False))
    try:
        got = []
        for k in range(2):
            a.reset(0, k)
            got.append(_fixtures(a))
            b.reset(4, k)  # draws from its own stream, between a's resets
        # openpi's loop, on a fresh env of the same task (no other env in between).
        task = a.benchmark.get_benchmark_dict()["libero_spatial"]()
        env = a.env_cls(
            bddl_file_name=task.get_task_bddl_file_path(0),
            has_renderer=False,
            has_offscreen_renderer=False,
            use_camera_obs=False,
        )
        env.seed(7)
        want = []
        for k in range(2):
            env.reset()
            env.set_init_state(task.get_task_init_states(0)[k])
            want.append(np.array(env.env.sim.model.body_pos))
        env.close()
    finally:
        a.close()
        b.close()
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert not np.array_equal(want[0], want[1])  # the second reset drew on: another placement


def test_robosuite_imports_without_the_macro_warning():
    # robosuite 1.4 warns "No private macro file found!" at every import (in every env worker)
    # until robosuite/macros_private.py exists; third_party/install_sims.sh writes it.
    out = subprocess.run(
        [sys.executable, "-c", "import robosuite"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "No private macro file" not in out.stdout + out.stderr, "run third_party/install_sims.sh"
