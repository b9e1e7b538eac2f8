"""ManiSkill3 adapter: stock tabletop tasks on the CPU, and ManiSkill's own GPU-batched simulation.

Init id (task, trial): task indexes ``ManiSkillConfig.tasks``; trial is the episode seed (the task
samples object and goal poses from it), so (task, trial) is one fixed initial scene.

Observation: the task's first sensor camera (or ``camera``) as "main", uint8 RGB; state = the
robot's joint positions (``agent/qpos``). Action: ``control_mode`` (default end-effector delta
pose, 7-d for Panda and WidowX). With ``binarize_gripper=t`` the last action dim becomes +1 if it
is > t else -1 (a model trained on 0/1 gripper labels then drives a +-1 gripper).
Reward: the task's success indicator, reported every step (``success``); ``reward_mode="dense"``
passes the task's dense reward instead, and ``reward_mode="grasp"`` the reference's shaped reward
of its PutOnPlate recipes (``GraspReward``). Episodes terminate on success (ManiSkill's own rule)
and are truncated at ``max_steps`` (default: the task's registered limit).

Two ways to run:
- CPU (``backend="cpu"``): one ManiSkill env per ``Sim``, rendered by SAPIEN on Vulkan (lavapipe
  on machines without a GPU), many worker processes in an EnvPool.
- GPU (``backend="gpu"``): ``GPUGroup`` is one ManiSkill env with ``num_envs=M`` simulated and
  rendered on CUDA inside a single worker process; resets are partial (``options["env_idx"]``).
  Envs sharing an init id within one reset call get identical scenes (the first one's state is
  copied to the others), but tasks that sample poses with torch.rand seeded once per batch do not
  promise the same scene for the same id across different reset calls. Not exercised by the
  CPU test-suite (written from ManiSkill 3.0.1's reset/state API, untested on a GPU).

Tasks whose assets are not shipped in the wheel (the Bridge/SimplerEnv ``*InScene*`` tasks need
``bridge_v2_real2sim``) fail at construction with the missing folder named.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from pirl.envs import base

# Language instructions for tasks that do not provide one (Bridge tasks do: env method).
INSTRUCTIONS: dict[str, str] = {
    "PickCube-v1": "pick up the red cube and move it to the green goal",
    "PushCube-v1": "push the cube onto the red and white target",
    "PullCube-v1": "pull the cube back onto the target",
    "StackCube-v1": "stack the red cube on top of the green cube",
    "LiftPegUpright-v1": "lift the peg and stand it upright",
    "PegInsertionSide-v1": "insert the peg into the hole in the box from the side",
    "PlugCharger-v1": "plug the charger into the wall socket",
    "PokeCube-v1": "use the peg to poke the cube to the goal",
    "RollBall-v1": "roll the ball to the goal region",
    "PlaceSphere-v1": "place the sphere into the bin",
}

# The reference's reward for its PutOnPlate recipes (RLinf rlinf/envs/maniskill/maniskill_env.py
# ``ManiskillEnv._calc_step_reward``, its default reward_mode with use_rel_reward): a level of 0.1
# once the object has been grasped, 0.1 more once it has been held for HELD_STEPS consecutive
# steps, and 1.0 while the task succeeds with the object grasped; each step is rewarded with the
# change of the level. The flags are the task's episode flags ``is_src_obj_grasped`` and
# ``consecutive_grasp`` (rlinf/envs/maniskill/tasks/put_on_in_scene_multi.py ``evaluate``: "ever
# grasped" and "ever grasped HELD_STEPS steps in a row"), derived from ``is_grasped`` for tasks
# that report only that.
GRASPED_REWARD, HELD_REWARD, PLACED_REWARD = 0.1, 0.1, 1.0
HELD_STEPS = 5


class GraspReward:
    """The reference's grasp-and-place reward for one env (see GRASPED_REWARD above)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.level, self.run, self.grasped, self.held = 0.0, 0, False, False

    def step(self, info: dict[str, bool]) -> float:
        """Reward of one step from its info flags: ``success`` and either the task's episode flags
        ``is_src_obj_grasped`` and ``consecutive_grasp`` or the per-step ``is_grasped``."""
        if "is_src_obj_grasped" in info and "consecutive_grasp" in info:
            self.grasped, self.held = bool(info["is_src_obj_grasped"]), bool(info["consecutive_grasp"])
        elif "is_grasped" in info:
            self.run = self.run + 1 if info["is_grasped"] else 0
            self.grasped = self.grasped or bool(info["is_grasped"])
            self.held = self.held or self.run >= HELD_STEPS
        else:
            raise ValueError(f"reward_mode='grasp' needs 'is_grasped' in the task's info, got keys {sorted(info)}")
        success = bool(info.get("success", False))
        level = GRASPED_REWARD * self.grasped + HELD_REWARD * self.held + PLACED_REWARD * (success and self.grasped)
        reward, self.level = level - self.level, level
        return reward


GRASP_INFO_KEYS = ("success", "is_grasped", "is_src_obj_grasped", "consecutive_grasp")


def _info_flags(info: dict, i: int) -> dict[str, bool]:
    """Env i's grasp-reward flags from a batched ManiSkill info dict."""
    return {k: bool(_to_numpy(info[k]).reshape(-1)[i]) for k in GRASP_INFO_KEYS if k in info}


# RLinf's WidowX scene with 25 objects: a different registry, built on the Bridge assets.
_BRIDGE_FAMILY = ("PutOnPlateInScene",)


def _check_task(task: str):
    """Raises a clear error when a task is unknown or its downloadable assets are missing."""
    # Late: the simulator (ManiSkill, its torch) is optional and heavy; imported only when used.
    from mani_skill import ASSET_DIR
    from mani_skill.utils.assets.data import DATA_SOURCES
    from mani_skill.utils.registration import REGISTERED_ENVS

    bridge_dir = os.path.join(str(ASSET_DIR), DATA_SOURCES["bridge_v2_real2sim"].target_path)
    if task not in REGISTERED_ENVS:
        if task.startswith(_BRIDGE_FAMILY):
            raise ValueError(
                f"ManiSkill task {task!r} is not registered in this mani_skill; it is a custom scene built "
                f"on the Bridge assets ('bridge_v2_real2sim', expected in {bridge_dir}) and must be "
                "registered by the package that defines it"
            )
        raise ValueError(f"unknown ManiSkill task {task!r}")
    for asset_id in REGISTERED_ENVS[task].asset_download_ids or ():
        path = os.path.join(str(ASSET_DIR), DATA_SOURCES[asset_id].target_path)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"ManiSkill task {task!r} needs asset {asset_id!r}, not found at {path} "
                f"(MS_ASSET_DIR={ASSET_DIR}); on a connected machine run "
                f"`python -m mani_skill.utils.download_asset {asset_id}` (see third_party/README.md)"
            )


@dataclasses.dataclass(frozen=True)
class ManiSkillConfig:
    """ManiSkill tasks as a pool factory.

    Attributes:
      tasks: registered env ids; a task id indexes this tuple.
      image_size: (H, W) of the camera.
      render: False observes state only (no camera, no Vulkan rendering).
      camera: sensor name; None takes the task's first sensor camera.
      control_mode: ManiSkill controller, e.g. "pd_ee_delta_pose" or "pd_joint_delta_pos"; None
        takes the task's registered default.
      reward_mode: "sparse" (success), "dense"/"normalized_dense" (the task's shaped reward), or
        "grasp" (the reference's grasp-and-place reward, ``GraspReward``).
      max_steps: None takes the task's registered episode limit.
      num_trials: seeds per task.
      binarize_gripper: threshold for the last action dim, or None to pass it through.
      backend: "cpu" (one env per Sim, many processes) or "gpu" (one batched env per worker).
    """

    tasks: tuple[str, ...] = ("PickCube-v1",)
    image_size: tuple[int, int] = (128, 128)
    render: bool = True
    camera: str | None = None
    control_mode: str | None = "pd_ee_delta_pose"
    reward_mode: str = "sparse"
    max_steps: int | None = None
    num_trials: int = 1000
    binarize_gripper: float | None = None
    backend: str = "cpu"

    def __post_init__(self):
        if not self.tasks:
            raise ValueError("ManiSkillConfig.tasks is empty")
        if self.backend not in ("cpu", "gpu"):
            raise ValueError(f"backend must be 'cpu' or 'gpu', got {self.backend!r}")
        if self.backend == "gpu" and len(self.tasks) != 1:
            raise ValueError("the GPU backend batches one task per worker; give exactly one task")
        if self.reward_mode not in ("sparse", "dense", "normalized_dense", "grasp"):
            raise ValueError(f"reward_mode must be sparse, dense, normalized_dense or grasp, got {self.reward_mode!r}")

    def make_env(self, task: int, num_envs: int = 1):
        # Late: the simulator (ManiSkill, its torch) is optional and heavy; imported only when used.
        import gymnasium as gym
        import mani_skill.envs  # noqa: F401  (registers the tasks)

        name = self.tasks[task]
        _check_task(name)
        os.environ.setdefault("MS_SKIP_ASSET_DOWNLOAD_PROMPT", "1")
        h, w = self.image_size
        kw = dict(
            num_envs=num_envs,
            obs_mode="rgb" if self.render else "state_dict",
            # "grasp" is computed here from the info flags; the task's own reward is not used.
            reward_mode="sparse" if self.reward_mode == "grasp" else self.reward_mode,
            sim_backend="physx_cuda" if self.backend == "gpu" else "physx_cpu",
            render_backend=("gpu" if self.backend == "gpu" else "cpu") if self.render else "none",
        )
        if self.render:
            kw["sensor_configs"] = dict(width=w, height=h)
        if self.max_steps is not None:
            kw["max_episode_steps"] = self.max_steps
        if self.control_mode is not None:
            kw["control_mode"] = self.control_mode
        return gym.make(name, **kw)

    def __call__(self, worker_index: int, num_envs: int) -> base.SimGroup:
        # Late: the simulator (ManiSkill, its torch) is optional and heavy; imported only when used.
        import torch

        torch.set_num_threads(1)
        if self.backend == "gpu":
            return GPUGroup(self, num_envs)
        return base.SerialGroup([ManiSkillSim(self) for _ in range(num_envs)])


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def episode_seed(task: int, trial: int) -> int:
    """The ManiSkill seed for an init id: distinct per (task, trial), < 2**31."""
    return int(task) * 1_000_003 + int(trial)


class _Common:
    """Helpers shared by the CPU Sim and the GPU group (both read batched obs dicts)."""

    cfg: ManiSkillConfig

    def _setup(self, env):
        u = env.unwrapped
        self.camera = None
        if self.cfg.render:
            cams = list(u._sensors)
            self.camera = self.cfg.camera or cams[0]
            if self.camera not in cams:
                raise ValueError(f"camera {self.camera!r} not among the task's sensors {cams}")
        # Late: the simulator (ManiSkill, its torch) is optional and heavy; imported only when used.
        from mani_skill.utils.registration import REGISTERED_ENVS

        # Each task's own time limit truncates it; the spec carries the longest.
        max_steps = self.cfg.max_steps or max(REGISTERED_ENVS[t].max_episode_steps for t in self.cfg.tasks)
        h, w = self.cfg.image_size
        cams = (base.CameraSpec("main", h, w),) if self.cfg.render else ()
        state_dim = int(np.prod(u.agent.robot.get_qpos().shape[1:]))
        self.spec = base.EnvSpec(
            cameras=cams,
            state_dim=state_dim,
            action_dim=int(env.action_space.shape[-1]),
            max_steps=int(max_steps),
            num_tasks=len(self.cfg.tasks),
            num_trials=self.cfg.num_trials,
        )

    def _images(self, obs, i: int) -> dict[str, np.ndarray]:
        if not self.cfg.render:
            return {}
        return {"main": _to_numpy(obs["sensor_data"][self.camera]["rgb"][i])}

    def _state(self, obs, i: int) -> np.ndarray:
        return _to_numpy(obs["agent"]["qpos"][i]).astype(np.float32)

    def _action(self, action: np.ndarray) -> np.ndarray:
        a = np.array(action, np.float32, copy=True)
        if self.cfg.binarize_gripper is not None:
            a[..., -1] = np.where(a[..., -1] > self.cfg.binarize_gripper, 1.0, -1.0)
        return a

    def _instruction(self, env, task: int) -> str:
        u = env.unwrapped
        if hasattr(u, "get_language_instruction"):
            return str(u.get_language_instruction()[0])
        name = self.cfg.tasks[task]
        return INSTRUCTIONS.get(name, name.rsplit("-", 1)[0])


class ManiSkillSim(_Common):
    """One single-env ManiSkill task on the CPU; the env is rebuilt when the task changes."""

    def __init__(self, cfg: ManiSkillConfig):
        self.cfg = cfg
        self.env, self.task = cfg.make_env(0), 0
        self._setup(self.env)
        self.grasp = GraspReward()

    def reset(self, task: int, trial: int) -> tuple[base.Obs, str]:
        if task != self.task:
            self.env.close()
            self.env, self.task = self.cfg.make_env(task), task
        obs, _ = self.env.reset(seed=episode_seed(task, trial))
        self.grasp.reset()
        return base.Obs(self._images(obs, 0), self._state(obs, 0)), self._instruction(self.env, task)

    def step(self, action) -> base.StepOut:
        obs, reward, terminated, truncated, info = self.env.step(self._action(action)[None])
        success = bool(_to_numpy(info["success"]).reshape(-1)[0]) if "success" in info else False
        if self.cfg.reward_mode == "grasp":
            reward = self.grasp.step(_info_flags(info, 0))
        return base.StepOut(
            base.Obs(self._images(obs, 0), self._state(obs, 0)),
            float(_to_numpy(reward).reshape(-1)[0]),
            bool(_to_numpy(terminated).reshape(-1)[0]),
            bool(_to_numpy(truncated).reshape(-1)[0]),
            success,
        )

    def close(self):
        self.env.close()


class GPUGroup(_Common):
    """M envs of one task in a single ManiSkill GPU env (the SimGroup of one worker).

    Steps always advance all M envs together (ManiSkill's GPU sim has no per-env stepping);
    envs the pool did not ask to step receive a zero action and their results are dropped - with
    one-episode-per-rollout those are finished episodes, so nothing observable changes.
    """

    def __init__(self, cfg: ManiSkillConfig, num_envs: int):
        self.cfg, self.num_envs = cfg, num_envs
        self.env = cfg.make_env(0, num_envs)
        self._setup(self.env)
        self.grasp = [GraspReward() for _ in range(num_envs)]

    def reset(self, env_ids, init_ids):
        # Late: the simulator (ManiSkill, its torch) is optional and heavy; imported only when used.
        import torch

        u = self.env.unwrapped
        idx = torch.as_tensor(env_ids, device=u.device)
        # ManiSkill replaces its whole per-env seed array with the list it is given, so the list must
        # cover all M envs even for a partial reset; envs outside env_idx keep their current seed.
        seeds = np.zeros(self.num_envs, np.int64)
        if getattr(u, "_episode_seed", None) is not None and len(u._episode_seed) == self.num_envs:
            seeds[:] = u._episode_seed
        seeds[env_ids] = [episode_seed(t, r) for t, r in init_ids]
        obs, _ = self.env.reset(seed=seeds.tolist(), options={"env_idx": idx})
        # Tasks draw poses with torch.rand seeded once per batch, so equal seeds within one batch do
        # not give equal scenes; copy the first env of each init id onto the others (GRPO groups).
        first = {}
        src, dst = [], []
        for e, key in zip(env_ids, map(tuple, np.asarray(init_ids).tolist()), strict=True):
            if key in first:
                src.append(first[key])
                dst.append(e)
            else:
                first[key] = e
        if dst:
            state = u.get_state_dict()
            pick = torch.as_tensor(src, device=u.device)
            sub = _tree_index(state, pick)
            obs, _ = self.env.reset(
                options={
                    "env_idx": torch.as_tensor(dst, device=u.device),
                    "reset_to_env_states": {"env_states": sub},
                }
            )
        for e in env_ids:
            self.grasp[e].reset()
        text = self._instruction(self.env, 0)
        return [(base.Obs(self._images(obs, i), self._state(obs, i)), text) for i in env_ids]

    def step(self, env_ids, actions):
        # Late: the simulator (ManiSkill, its torch) is optional and heavy; imported only when used.
        import torch

        u = self.env.unwrapped
        full = np.zeros((self.num_envs, self.spec.action_dim), np.float32)
        full[env_ids] = self._action(actions)
        obs, reward, terminated, truncated, info = self.env.step(torch.as_tensor(full, device=u.device))
        r, te, tr = _to_numpy(reward), _to_numpy(terminated), _to_numpy(truncated)
        su = _to_numpy(info["success"]) if "success" in info else np.zeros(self.num_envs, bool)
        if self.cfg.reward_mode == "grasp":
            r = np.array(
                [self.grasp[i].step(_info_flags(info, i)) if i in env_ids else 0.0 for i in range(self.num_envs)]
            )
        return [
            base.StepOut(
                base.Obs(self._images(obs, i), self._state(obs, i)),
                float(r[i]),
                bool(te[i]),
                bool(tr[i]),
                bool(su[i]),
            )
            for i in env_ids
        ]

    def close(self):
        self.env.close()


def _tree_index(tree, idx):
    if isinstance(tree, dict):
        return {k: _tree_index(v, idx) for k, v in tree.items()}
    return tree[idx]
