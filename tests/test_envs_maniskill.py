"""ManiSkill3 adapter on the CPU (SAPIEN + lavapipe): pool rendering, groups, success, errors."""

import numpy as np
import pytest

pytest.importorskip("mani_skill")

from envs_helpers import NoJax, assert_images_ok

from pirl.envs import maniskill as ms
from pirl.envs import pool


def test_missing_assets_and_unknown_tasks_are_named():
    with pytest.raises(FileNotFoundError, match=r"needs asset 'bridge_v2_real2sim', not found at .*bridge"):
        ms.ManiSkillSim(ms.ManiSkillConfig(tasks=("PutCarrotOnPlateInScene-v1",)))
    with pytest.raises(ValueError, match=r"PutOnPlateInScene25Main-v3.*bridge_v2_real2sim"):
        ms.ManiSkillSim(ms.ManiSkillConfig(tasks=("PutOnPlateInScene25Main-v3",)))
    with pytest.raises(ValueError, match="unknown ManiSkill task 'PickCube-v9'"):
        ms.ManiSkillSim(ms.ManiSkillConfig(tasks=("PickCube-v9",)))
    with pytest.raises(ValueError, match="exactly one task"):
        ms.ManiSkillConfig(tasks=("PickCube-v1", "PushCube-v1"), backend="gpu")


def test_gripper_binarization():
    sim = object.__new__(ms.ManiSkillSim)
    sim.cfg = ms.ManiSkillConfig(binarize_gripper=0.5)
    a = np.array([[0.1, 0.2, 0.3, 0, 0, 0, 0.7], [0.1, 0.2, 0.3, 0, 0, 0, 0.2]], np.float32)
    out = sim._action(a)
    np.testing.assert_array_equal(out[:, 6], [1.0, -1.0])
    np.testing.assert_array_equal(out[:, :6], a[:, :6])
    sim.cfg = ms.ManiSkillConfig()
    np.testing.assert_array_equal(sim._action(a), a)


def test_scripted_pick_reports_success():
    """A hand-written pick (privileged cube and goal poses, end-effector deltas) must end with
    success, termination and one unit of sparse reward."""
    sim = ms.ManiSkillSim(ms.ManiSkillConfig(tasks=("PickCube-v1",), render=False))
    u = sim.env.unwrapped
    try:
        for trial in range(2):
            obs, text = sim.reset(0, trial)
            assert obs.state.shape == (9,) and obs.images == {} and "cube" in text
            ret, out = 0.0, None
            for t in range(50):
                out = sim.step(_scripted_pick(u, t))
                ret += out.reward
                if out.terminated or out.truncated:
                    break
            assert out.success and out.terminated and not out.truncated and ret == 1.0, (trial, t)
    finally:
        sim.close()


@pytest.mark.slow
def test_pickcube_through_pool_renders_and_groups():
    cfg = ms.ManiSkillConfig(tasks=("PickCube-v1", "PushCube-v1"), image_size=(64, 64))
    with pool.EnvPool(NoJax(cfg), pool.PoolConfig(2, 1)) as p:
        assert p.spec.action_dim == 7 and p.spec.state_dim == 9 and p.spec.max_steps == 50
        obs = p.reset(np.array([[0, 4], [0, 4]]))
        assert_images_ok(obs.images, ["main"], (64, 64))
        np.testing.assert_array_equal(obs.images["main"][0], obs.images["main"][1])
        assert obs.instruction == [ms.INSTRUCTIONS["PickCube-v1"]] * 2
        obs2 = p.reset(np.array([[0, 5], [1, 0]]))  # another seed moves the cube; another task
        assert not np.array_equal(obs2.images["main"][0], obs.images["main"][0])
        assert obs2.instruction[1] == ms.INSTRUCTIONS["PushCube-v1"]
        act = np.zeros((2, 4, 7), np.float32)
        act[:, :, 2] = 1.0
        r = p.step_chunk(act)
        assert r.valid.all() and not r.success.any() and not r.crashed.any()
        assert not np.array_equal(r.obs.images["main"], obs2.images["main"])  # the arm moved


# The reference's reward (RLinf rlinf/envs/maniskill/maniskill_env.py ManiskillEnv._calc_step_reward,
# default reward_mode, use_rel_reward): level = 0.1 * is_src_obj_grasped + 0.1 * consecutive_grasp
# + 1.0 * (success & is_src_obj_grasped), reward = level - previous level (0 after a reset). Its task
# (rlinf/envs/maniskill/tasks/put_on_in_scene_multi.py evaluate) reports is_src_obj_grasped as "ever
# grasped this episode" and consecutive_grasp as "ever grasped 5 steps in a row".


def test_grasp_reward_from_per_step_grasp_flags():
    # Grasped at steps 1-6, success at steps 6-7 and lost at 8:
    #   ever grasped from step 1 (+0.1); 5 in a row at step 5 (+0.1); success while ever grasped at
    #   step 6 (+1.0), still at 7 (+0), lost at 8 (-1.0).
    grasped = [0, 1, 1, 1, 1, 1, 1, 0, 0]
    success = [0, 0, 0, 0, 0, 0, 1, 1, 0]
    want = [0.0, 0.1, 0.0, 0.0, 0.0, 0.1, 1.0, 0.0, -1.0]
    r = ms.GraspReward()
    got = [r.step({"is_grasped": bool(g), "success": bool(s)}) for g, s in zip(grasped, success, strict=True)]
    np.testing.assert_allclose(got, want, atol=1e-9)
    # A grasp run broken before 5 steps does not count as held; success without a grasp pays nothing.
    r.reset()
    got = [r.step({"is_grasped": g, "success": s}) for g, s in [(1, 0), (1, 0), (0, 0), (1, 0), (0, 1)]]
    np.testing.assert_allclose(got, [0.1, 0, 0, 0, 1.0], atol=1e-9)
    r.reset()
    np.testing.assert_allclose([r.step({"is_grasped": False, "success": True})], [0.0])


def test_grasp_reward_from_the_reference_tasks_episode_flags():
    # The task's own flags are used as they are: levels 0, 0.1, 0.2, 1.2, then success is lost.
    r = ms.GraspReward()
    flags = [(0, 0, 0), (1, 0, 0), (1, 1, 0), (1, 1, 1), (1, 1, 0)]
    got = [r.step({"is_src_obj_grasped": g, "consecutive_grasp": c, "success": s}) for g, c, s in flags]
    np.testing.assert_allclose(got, [0.0, 0.1, 0.1, 1.0, -1.0], atol=1e-9)
    with pytest.raises(ValueError, match="is_grasped"):
        ms.GraspReward().step({"success": True})
    with pytest.raises(ValueError, match="reward_mode"):
        ms.ManiSkillConfig(reward_mode="shaped")


def _scripted_pick(u, t: int) -> np.ndarray:
    """Above the cube, down to it, close the gripper, carry it to the goal (ee deltas, 0.1 m)."""
    tcp, cube = u.agent.tcp.pose.p[0].numpy(), u.cube.pose.p[0].numpy()
    goal = u.goal_site.pose.p[0].numpy()
    target, grip = [(cube + np.array([0, 0, 0.06]), 1), (cube, 1), (tcp, -1), (goal, -1)][
        (t >= 12) + (t >= 20) + (t >= 25)
    ]
    a = np.zeros(7, np.float32)
    a[:3] = np.clip((target - tcp) / 0.1, -1, 1)
    a[6] = grip
    return a


def test_grasp_reward_on_a_real_pick():
    """PickCube-v1 reports is_grasped per step: the adapter's rewards must be the level changes of
    the reference's formula applied to the task's own evaluate() flags, summing to 0.1 + 0.1 + 1.0
    when the scripted pick grasps, holds and places the cube."""
    sim = ms.ManiSkillSim(ms.ManiSkillConfig(tasks=("PickCube-v1",), render=False, reward_mode="grasp"))
    u = sim.env.unwrapped
    try:
        sim.reset(0, 0)
        rewards, want, level, run, ever, held = [], [], 0.0, 0, False, False
        for t in range(50):
            out = sim.step(_scripted_pick(u, t))
            info = u.evaluate()  # PickCube's evaluate is a pure function of the poses
            g, s = bool(info["is_grasped"][0]), bool(info["success"][0])
            run = run + 1 if g else 0
            ever, held = ever or g, held or run >= 5
            new = 0.1 * ever + 0.1 * held + 1.0 * (s and ever)
            rewards.append(out.reward)
            want.append(new - level)
            level = new
            if out.terminated or out.truncated:
                break
        assert out.success and out.terminated
        np.testing.assert_allclose(rewards, want, atol=1e-6)
        assert sum(rewards) == pytest.approx(1.2)
        assert sorted(np.round(rewards, 6))[-3:] == [0.1, 0.1, 1.0]
    finally:
        sim.close()


def test_pool_finishes_the_chunk_an_episode_ends_in():
    """RLinf rlinf/envs/maniskill/maniskill_env.py ManiskillEnv.chunk_step: every env executes all
    actions of the chunk even after its episode ended, and those steps' rewards count. A scripted
    PickCube pick, replayed through a pool in chunks, must give the per-step rewards of the same
    actions stepped straight through in this process (past the success, to the chunk's end)."""
    cfg = ms.ManiSkillConfig(tasks=("PickCube-v1",), render=False, reward_mode="grasp")
    sim = ms.ManiSkillSim(cfg)
    u = sim.env.unwrapped
    try:
        sim.reset(0, 0)
        actions, rewards, end = [], [], None
        for t in range(50):
            actions.append(_scripted_pick(u, t))
            out = sim.step(actions[-1])
            rewards.append(out.reward)
            if out.terminated and end is None:
                end = t + 1  # steps in the episode
            if end is not None and len(actions) % 4 == 0 and len(actions) > end:
                break  # the success fell inside this 4-step chunk, which is now complete
    finally:
        sim.close()
    assert end is not None and end % 4, "the pick must end inside a chunk for this test"
    chunks = np.array(actions, np.float32).reshape(1, -1, 4, 7)
    with pool.EnvPool(NoJax(cfg), pool.PoolConfig(1, 1, finish_chunks=True)) as p:
        p.reset(np.array([[0, 0]]))
        results = [p.step_chunk(chunks[:, c]) for c in range(chunks.shape[1])]
    got = np.concatenate([r.rewards[0] for r in results])
    np.testing.assert_allclose(got, rewards, atol=1e-6)
    last = results[-1]
    assert last.valid.all() and last.done[0] and last.terminated[0, (end - 1) % 4]
    assert last.episode_length[0] == len(actions) and last.episode_return[0] == pytest.approx(sum(rewards))
