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
                tcp, cube = u.agent.tcp.pose.p[0].numpy(), u.cube.pose.p[0].numpy()
                goal = u.goal_site.pose.p[0].numpy()
                # above the cube, down to it, close the gripper, carry it to the goal
                target, grip = [(cube + np.array([0, 0, 0.06]), 1), (cube, 1), (tcp, -1), (goal, -1)][
                    (t >= 12) + (t >= 20) + (t >= 25)
                ]
                a = np.zeros(7, np.float32)
                a[:3] = np.clip((target - tcp) / 0.1, -1, 1)  # ee deltas are scaled to 0.1 m
                a[6] = grip
                out = sim.step(a)
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
