"""MetaWorld adapter through the pool: images, groups, scripted experts, relative reward."""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("metaworld")

from envs_helpers import ROOT, NoJax, RenderEveryStep, assert_images_ok, chunk_observations

from pirl.envs import base, pool
from pirl.envs import metaworld as mw


def test_task_lists_and_instructions():
    from metaworld import env_dict

    cfg = mw.MetaWorldConfig()
    assert sorted(cfg.task_names()) == sorted(env_dict.ALL_V3_ENVIRONMENTS)  # the 50 v3 tasks
    train = mw.MetaWorldConfig(benchmark="ML45-train").task_names()
    test = mw.MetaWorldConfig(benchmark="ML45-test").task_names()
    assert len(train) == 45 and len(test) == 5 and not set(train) & set(test)
    assert mw.MetaWorldConfig(benchmark="reach-v3").spec().num_tasks == 1
    with pytest.raises(ValueError, match="unknown MetaWorld benchmark 'MT51'"):
        mw.MetaWorldConfig(benchmark="MT51")
    with pytest.raises(ValueError, match="camera 'side'"):
        mw.MetaWorldConfig(camera="side")
    with pytest.raises(ValueError, match=r"warmup_steps \+ max_steps = 516 > 500"):
        mw.MetaWorldConfig(max_steps=500)


def test_instructions_are_the_references_task_descriptions():
    """RLinf rlinf/envs/metaworld/metaworld_config.json TASK_DESCRIPTIONS (read by
    MetaWorldBenchmark.get_task_description; identical in LeRobot's src/lerobot/envs/
    metaworld_config.json). The digest is sha256 of "name<TAB>description" lines joined by newlines in
    the file's order, computed from that file; the file's order is also the reference's MT50 task
    ids (MetaWorldBenchmark.get_env_names)."""
    import hashlib

    lines = "\n".join(f"{k}\t{v}" for k, v in mw.INSTRUCTIONS.items())
    assert (
        hashlib.sha256(lines.encode()).hexdigest() == "bcb4b0e9c0e52c3435be69651a4dfc55bfe71140f7a40e19f585021f18ae4894"
    )
    # A few of them, as the file has them:
    assert mw.INSTRUCTIONS["button-press-v3"] == "Press a button"
    assert mw.INSTRUCTIONS["reach-v3"] == "Reach a goal position"
    assert mw.INSTRUCTIONS["pick-place-wall-v3"] == "Pick a puck, bypass a wall and place the puck"
    names = mw.MetaWorldConfig().task_names()
    assert names[0] == "assembly-v3" and names[17] == "hand-insert-v3" and names[31] == "reach-v3"
    sim = mw.MetaWorldSim(mw.MetaWorldConfig(benchmark="button-press-v3", render=False))
    try:
        assert sim.reset(0, 0)[1] == "Press a button"
    finally:
        sim.close()


def test_warmup_is_the_references_16_zero_action_steps():
    """RLinf rlinf/envs/metaworld/metaworld_env.py MetaWorldEnv.reset: after env.reset() the reset
    envs take RESET_STEP = 15 zero actions, then every env one more, whose observation is returned."""
    import metaworld

    assert mw.MetaWorldConfig().warmup_steps == 16
    sim = mw.MetaWorldSim(mw.MetaWorldConfig(benchmark="pick-place-v3", render=False, state="full"))
    env = metaworld.env_dict.ALL_V3_ENVIRONMENTS["pick-place-v3"]()
    try:
        obs, _ = sim.reset(0, 3)
        env.set_task(metaworld.MT1("pick-place-v3", seed=0).train_tasks[3])
        raw, _ = env.reset()
        states = [raw]
        for _ in range(16):
            states.append(env.step(np.zeros(4, np.float32))[0])
        np.testing.assert_array_equal(obs.state, states[16].astype(np.float32))
        assert not np.array_equal(obs.state, states[15].astype(np.float32))  # the hand still moves then
    finally:
        sim.close()
        env.close()


def _pool_images(factory, ids, gl: str) -> np.ndarray:
    """The "main" images after a reset of ``ids`` in ONE worker and one zero-action step."""
    with pool.EnvPool(NoJax(factory), pool.PoolConfig(1, len(ids), gl=gl)) as p:
        p.reset(np.asarray(ids))
        return p.step_chunk(np.zeros((len(ids), 1, p.spec.action_dim), np.float32)).obs.images["main"]


def test_observation_is_the_render_rotated_180_degrees(tmp_path):
    """RLinf's MetaWorld env (rlinf/envs/metaworld/metaworld_env.py MetaWorldEnv._wrap_obs) and eval
    script (toolkits/standalone_eval_scripts/openpi/metaworld_eval.py) and LeRobot's
    (src/lerobot/envs/metaworld.py MetaworldEnv._format_raw_obs) take ``render()[::-1, ::-1]`` of the
    "corner2" camera moved to (0.75, 0.075, 0.7), 480x480 (gymnasium's MetaWorld default), with
    MuJoCo's default shadows."""
    from configs import metaworld_ppo

    cfg = mw.MetaWorldConfig(benchmark="reach-v3", image_size=(64, 64))
    assert (cfg.camera, cfg.camera_pos, cfg.fast_render) == ("corner2", (0.75, 0.075, 0.7), False)
    recipe = metaworld_ppo.get_config("")
    assert tuple(recipe.env.image_size) == (480, 480) and not recipe.env.fast_render
    # In a fresh process: MUJOCO_GL must be set before the first GL context.
    out = tmp_path / "frames.npz"
    code = (
        "import numpy as np\n"
        "from pirl.envs import metaworld as mw\n"
        "sim = mw.MetaWorldSim(mw.MetaWorldConfig(benchmark='reach-v3', image_size=(64, 64)))\n"
        "obs, _ = sim.reset(0, 0)\n"
        f"np.savez({str(out)!r}, obs=obs.images['main'], render=sim.env.render())\n"
        "sim.close()\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    frames = np.load(out)
    assert frames["obs"].std() > 5
    np.testing.assert_array_equal(frames["obs"], frames["render"][::-1, ::-1])
    assert not np.array_equal(frames["obs"], frames["render"][::-1])  # a vertical flip alone is not it


def test_sims_of_one_worker_render_their_own_scene():
    """Two sims of different tasks in one worker process: each must draw its own scene, as it would
    alone in its process, under osmesa and under EGL (gymnasium draws with the current GL context,
    the most recently created one, unless each sim makes its own current)."""
    cfg = mw.MetaWorldConfig(image_size=(64, 64), fast_render=True)
    names = cfg.task_names()
    reach, drawer = [names.index("reach-v3"), 1], [names.index("drawer-open-v3"), 0]
    for gl in ("osmesa", "egl"):
        together = _pool_images(cfg, [reach, drawer], gl)
        alone = _pool_images(cfg, [reach], gl)
        np.testing.assert_array_equal(together[0], alone[0])
        assert not np.array_equal(together[0], together[1])


def test_mt50_average_is_mean_of_group_means():
    # easy tasks 1.0, medium 0.5, hard and very hard 0 -> (1 + 0.5 + 0 + 0) / 4 = 0.375
    # (a plain mean over the 50 tasks would give (28 + 5.5) / 50 = 0.67).
    rates = {n: {"easy": 1.0, "medium": 0.5}.get(g, 0.0) for g, names in mw.DIFFICULTY.items() for n in names}
    assert mw.mt50_average(rates) == pytest.approx(0.375)
    with pytest.raises(ValueError, match="missing for 1 tasks"):
        mw.mt50_average({k: v for k, v in rates.items() if k != "reach-v3"})


def test_experts_succeed_through_pool_and_groups_match():
    cfg = mw.MetaWorldConfig(image_size=(64, 64), state="full", max_steps=150)
    names = cfg.task_names()
    tasks = ["reach-v3", "drawer-open-v3", "button-press-topdown-v3"]
    # Envs 0 and 2 share an init id, in different worker processes; envs 1 and 3 run other tasks.
    reach = [names.index(tasks[0]), 3]
    ids = np.array([reach, [names.index(tasks[1]), 0], reach, [names.index(tasks[2]), 0]])
    with pool.EnvPool(NoJax(cfg), pool.PoolConfig(2, 2, gl="osmesa")) as p:
        assert p.spec.state_dim == 39 and p.spec.action_dim == 4 and p.spec.max_steps == 150
        obs = p.reset(ids)
        assert_images_ok(obs.images, ["main"], (64, 64))
        np.testing.assert_array_equal(obs.images["main"][0], obs.images["main"][2])
        np.testing.assert_array_equal(obs.state[0], obs.state[2])
        assert not np.array_equal(obs.images["main"][0], obs.images["main"][1])
        assert obs.instruction[1] == mw.INSTRUCTIONS["drawer-open-v3"]
        env_tasks = [names[t] for t in ids[:, 0]]
        first = obs.images["main"].copy()
        for _ in range(150):
            r = p.step_chunk(mw.expert_actions(env_tasks, obs.state)[:, None, :])
            obs = r.obs
            if r.done.all():
                break
        assert r.success_once.all(), r.success_once
        assert not r.crashed.any()
        # Relative success reward: exactly +1 per episode, on the step that terminated it.
        np.testing.assert_array_equal(r.episode_return, 1.0)
        assert (r.episode_length < 150).all()
        # The arm moved: last frames differ from the first ones.
        assert (np.abs(obs.images["main"].astype(int) - first).mean(axis=(1, 2, 3)) > 0.5).all()


def test_deferred_render_equals_rendering_every_step():
    """The pool renders MetaWorld once per chunk (the state the policy sees); its observations must
    equal those of groups that render after every step, also for episodes ending mid-chunk."""
    cfg = mw.MetaWorldConfig(benchmark="reach-v3", image_size=(32, 32), max_steps=7)
    assert cfg(0, 1).deferred
    chunk = 3  # 7 steps = 3 + 3 + 1: the episode is truncated on the first step of the third chunk
    actions = np.random.default_rng(0).uniform(-1, 1, (2, 3 * chunk, 4)).astype(np.float32)
    ids = np.array([[0, 1], [0, 4]])
    cfg_pool = pool.PoolConfig(1, 2, gl="osmesa")
    results = [chunk_observations(f, cfg_pool, ids, actions, chunk) for f in (NoJax(cfg), RenderEveryStep(cfg))]
    for deferred, eager in zip(*results, strict=True):
        assert_images_ok(deferred.images, ["main"], (32, 32))
        np.testing.assert_array_equal(deferred.images["main"], eager.images["main"])
        np.testing.assert_array_equal(deferred.state, eager.state)
    # The last chunk ran one step (the truncation), and its frame differs from the one before.
    assert not np.array_equal(results[0][3].images["main"], results[0][2].images["main"])


def test_dense_reward_runs_to_the_step_limit():
    # MetaWorld's shaped reach reward is 10 inside the goal tolerance, so the scaled reward of an
    # expert that got there is exactly 1.0; episodes are not cut at success.
    cfg = mw.MetaWorldConfig(benchmark="reach-v3", render=False, state="full", max_steps=60, reward="dense")
    with pool.EnvPool(NoJax(cfg), pool.PoolConfig(1, 2)) as p:
        obs = p.reset(np.array([[0, 0], [0, 7]]))
        rewards, success = [], []
        for _ in range(60):
            r = p.step_chunk(mw.expert_actions(["reach-v3"] * 2, obs.state)[:, None, :])
            obs = r.obs
            rewards.append(r.rewards[:, 0])
            success.append(r.success[:, 0])
        rewards, success = np.stack(rewards, 1), np.stack(success, 1)
    assert r.done.all() and not r.terminated.any() and r.truncated[:, -1].all()
    np.testing.assert_array_equal(r.episode_length, [60, 60])
    assert success.any(axis=1).all() and r.success_once.all()
    assert ((rewards >= 0) & (rewards <= 1)).all()
    np.testing.assert_allclose(rewards[:, -1], 1.0)
    assert (rewards[:, 0] < 0.5).all()  # far from the goal at the start
    with pytest.raises(ValueError, match="reward"):
        mw.MetaWorldConfig(reward="shaped")


def test_expert_needs_full_state():
    with pytest.raises(ValueError, match=r"full \(N, 39\) state"):
        mw.expert_actions(["reach-v3"], np.zeros((1, 4)))


def test_expert_actions_are_clipped_without_the_library_warning():
    # Hand far from the goal: reach's expert asks for more than the env's [-1, 1] (MetaWorld warns
    # "Constant(s) may be too high" from move()); pirl clips as the env does, silently.
    state = np.zeros((1, 39))
    state[0, :3], state[0, 36:39] = (0.0, 0.6, 0.2), (0.5, 0.9, 0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        actions = mw.expert_actions(["reach-v3"], state)
    assert np.abs(actions).max() == 1.0


def test_group_init_ids_cover_tasks_and_trials():
    spec = mw.MetaWorldConfig(num_trials=10).spec()
    ids = base.group_init_ids(spec, 64, 8, np.random.default_rng(1))
    assert ids.shape == (64, 2) and (ids[:, 0] < 50).all() and (ids[:, 1] < 10).all()
    assert (ids.reshape(8, 8, 2) == ids.reshape(8, 8, 2)[:, :1]).all()
