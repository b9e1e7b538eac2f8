"""MetaWorld v3 (MuJoCo) adapter: MT50, ML45 train/test and single tasks.

Init id (task, trial): task indexes ``MetaWorldConfig.task_names()``; trial indexes the 50 goal
variations that ``metaworld.MT1(name, seed)`` samples, so a given (seed, task, trial) is one fixed
object/goal layout in every process.

Observation: one camera image (``camera``, flipped upright by default, since MuJoCo's offscreen
buffer comes out upside down) and a state of either the hand: ``obs[:4]`` = end-effector xyz +
gripper opening (what the VLA sees), or ``full``: the 39-d MetaWorld vector (what the scripted
experts need). Action: 4-d in [-1, 1] (xyz delta + gripper).
Reward: relative success, ``success_t - success_{t-1}``, so +1 on the first success step; the
episode terminates on success. ``reward="dense"`` instead passes MetaWorld's shaped reward scaled
to [0, 1] (it is in [0, 10]) and runs every episode to ``max_steps``: terminating on success would
cut off the reward of staying at the goal. Success is reported either way.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pirl.envs import base

# One instruction per v3 task, written for this project (MetaWorld ships none).
INSTRUCTIONS: dict[str, str] = {
    "assembly-v3": "pick up the nut and place it onto the peg",
    "basketball-v3": "pick up the basketball and dunk it into the hoop",
    "bin-picking-v3": "pick up the cube from one bin and place it in the other bin",
    "box-close-v3": "pick up the lid and put it on the box to close it",
    "button-press-topdown-v3": "press the button down from the top",
    "button-press-topdown-wall-v3": "press the button down from the top behind the wall",
    "button-press-v3": "push the button forward",
    "button-press-wall-v3": "push the button forward behind the wall",
    "coffee-button-v3": "press the button on the coffee machine",
    "coffee-pull-v3": "pull the coffee mug out from under the machine",
    "coffee-push-v3": "push the coffee mug under the coffee machine",
    "dial-turn-v3": "rotate the dial a full turn",
    "disassemble-v3": "pick the nut up off the peg",
    "door-close-v3": "push the door closed",
    "door-lock-v3": "turn the door lock down to lock it",
    "door-open-v3": "pull the door open",
    "door-unlock-v3": "turn the door lock up to unlock it",
    "hand-insert-v3": "move the hand into the hole in the table",
    "drawer-close-v3": "push the drawer closed",
    "drawer-open-v3": "pull the drawer open",
    "faucet-open-v3": "rotate the faucet handle to turn it on",
    "faucet-close-v3": "rotate the faucet handle to turn it off",
    "hammer-v3": "pick up the hammer and hit the nail into the wall",
    "handle-press-side-v3": "press the handle down from the side",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up from the side",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever up",
    "pick-place-wall-v3": "pick up the puck and place it at the goal behind the wall",
    "pick-out-of-hole-v3": "pick the peg up out of the hole",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "plate-slide-v3": "slide the plate into the goal",
    "plate-slide-side-v3": "slide the plate sideways into the goal",
    "plate-slide-back-v3": "slide the plate back out of the goal",
    "plate-slide-back-side-v3": "slide the plate back sideways out of the goal",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "peg-unplug-side-v3": "pull the peg out of the hole sideways",
    "soccer-v3": "kick the soccer ball into the goal",
    "stick-push-v3": "grasp the stick and use it to push the bottle",
    "stick-pull-v3": "grasp the stick and use it to pull the bottle",
    "push-v3": "push the puck to the goal",
    "push-wall-v3": "push the puck around the wall to the goal",
    "push-back-v3": "push the puck backward to the goal",
    "reach-v3": "reach the red goal position",
    "reach-wall-v3": "reach the goal position over the wall",
    "shelf-place-v3": "pick up the puck and place it on the shelf",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the edge of the table",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
}

# Difficulty groups used to report the MT50 "Avg." (mean of the four group means).
DIFFICULTY: dict[str, tuple[str, ...]] = {
    "easy": (
        "button-press-v3",
        "button-press-topdown-v3",
        "button-press-topdown-wall-v3",
        "button-press-wall-v3",
        "coffee-button-v3",
        "dial-turn-v3",
        "door-close-v3",
        "door-lock-v3",
        "door-open-v3",
        "door-unlock-v3",
        "drawer-close-v3",
        "drawer-open-v3",
        "faucet-close-v3",
        "faucet-open-v3",
        "handle-press-v3",
        "handle-press-side-v3",
        "handle-pull-v3",
        "handle-pull-side-v3",
        "lever-pull-v3",
        "plate-slide-v3",
        "plate-slide-back-v3",
        "plate-slide-back-side-v3",
        "plate-slide-side-v3",
        "reach-v3",
        "reach-wall-v3",
        "window-close-v3",
        "window-open-v3",
        "peg-unplug-side-v3",
    ),
    "medium": (
        "basketball-v3",
        "bin-picking-v3",
        "box-close-v3",
        "coffee-pull-v3",
        "coffee-push-v3",
        "hammer-v3",
        "peg-insert-side-v3",
        "push-wall-v3",
        "soccer-v3",
        "sweep-v3",
        "sweep-into-v3",
    ),
    "hard": (
        "assembly-v3",
        "hand-insert-v3",
        "pick-out-of-hole-v3",
        "pick-place-v3",
        "push-v3",
        "push-back-v3",
    ),
    "very_hard": ("shelf-place-v3", "disassemble-v3", "stick-pull-v3", "stick-push-v3", "pick-place-wall-v3"),
}

CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV")


@dataclasses.dataclass(frozen=True)
class MetaWorldConfig:
    """MetaWorld tasks as a pool factory.

    Attributes:
      benchmark: "MT50", "ML45-train", "ML45-test", or one task name such as "reach-v3".
      image_size: (H, W) of the camera image.
      render: False gives observations with no image (fast, for state-only use and benchmarks).
      camera: one of CAMERAS.
      camera_pos: if set, moves the camera to this world position (x, y, z) before rendering.
      flip: turn the image upright (MuJoCo renders it upside down).
      state: "hand" (4-d: xyz + gripper) or "full" (39-d MetaWorld observation).
      max_steps: episode length limit, counted after the warm-up.
      num_trials: goal variations per task (<= 50).
      warmup_steps: no-op steps after reset (lets objects settle), not counted.
      seed: seed of MetaWorld's goal sampling; every process must use the same one.
      reward: "success" (sparse, terminates on success) or "dense" (shaped, see the module doc).
    """

    benchmark: str = "MT50"
    image_size: tuple[int, int] = (128, 128)
    render: bool = True
    camera: str = "corner2"
    camera_pos: tuple[float, float, float] | None = (0.75, 0.075, 0.7)
    flip: bool = True
    state: str = "hand"
    max_steps: int = 100
    num_trials: int = 50
    warmup_steps: int = 15
    seed: int = 0
    reward: str = "success"

    def __post_init__(self):
        self.task_names()  # validates the benchmark name
        if self.camera not in CAMERAS:
            raise ValueError(f"camera {self.camera!r} is not a MetaWorld camera; choose from {CAMERAS}")
        if self.reward not in ("success", "dense"):
            raise ValueError(f"reward must be 'success' or 'dense', got {self.reward!r}")
        if self.state not in ("hand", "full"):
            raise ValueError(f"state must be 'hand' or 'full', got {self.state!r}")
        if not 1 <= self.num_trials <= 50:
            raise ValueError(f"num_trials must be in [1, 50] (MT1 samples 50 goals), got {self.num_trials}")
        # MetaWorld raises if stepped past 500 steps, warm-up included.
        if self.warmup_steps + self.max_steps > 500:
            raise ValueError(f"warmup_steps + max_steps = {self.warmup_steps + self.max_steps} > 500")

    def task_names(self) -> list[str]:
        names = list(INSTRUCTIONS)
        if self.benchmark == "MT50":
            return names
        if self.benchmark in ("ML45-train", "ML45-test"):
            # Late: the simulator (MetaWorld, MuJoCo) is optional and heavy; imported only when used.
            from metaworld import env_dict

            return list(env_dict.ML45_V3["train" if self.benchmark == "ML45-train" else "test"])
        if self.benchmark in INSTRUCTIONS:
            return [self.benchmark]
        raise ValueError(
            f"unknown MetaWorld benchmark {self.benchmark!r}: use MT50, ML45-train, ML45-test or a task name"
        )

    def spec(self) -> base.EnvSpec:
        cams = (base.CameraSpec("main", *self.image_size),) if self.render else ()
        return base.EnvSpec(
            cameras=cams,
            state_dim=4 if self.state == "hand" else 39,
            action_dim=4,
            max_steps=self.max_steps,
            num_tasks=len(self.task_names()),
            num_trials=self.num_trials,
        )

    def __call__(self, worker_index: int, num_envs: int) -> base.SerialGroup:
        """Pool factory: M independent MetaWorld sims (each one MuJoCo model + renderer)."""
        base.check_mujoco_render_contexts(self.render, num_envs)
        return base.SerialGroup([MetaWorldSim(self) for _ in range(num_envs)])


class MetaWorldSim:
    """One MetaWorld env that switches task on reset (the model is rebuilt when the task changes)."""

    def __init__(self, cfg: MetaWorldConfig):
        self.cfg, self.spec = cfg, cfg.spec()
        self.names = cfg.task_names()
        self._goals: dict[str, list] = {}  # task name -> MT1 goal variations (cheap to keep)
        self.env, self.env_name = None, None
        self.prev_success = False

    def _make(self, name: str):
        # Late: the simulator (MetaWorld, MuJoCo) is optional and heavy; imported only when used.
        import metaworld

        if name not in self._goals:
            self._goals[name] = metaworld.MT1(name, seed=self.cfg.seed).train_tasks
        if self.env_name != name:
            if self.env is not None:
                self.env.close()
            h, w = self.cfg.image_size
            kw = dict(render_mode="rgb_array", camera_name=self.cfg.camera, width=w, height=h)
            env = metaworld.env_dict.ALL_V3_ENVIRONMENTS[name](**(kw if self.cfg.render else {}))
            # Shadows and multisampling dominate llvmpipe render time (31 -> ~50 frames/s at 224^2);
            # both are read when the renderer is created, so set them before the first render.
            env.model.vis.quality.shadowsize = 0
            env.model.vis.quality.offsamples = 0
            if self.cfg.camera_pos is not None:
                # Late: the simulator (MetaWorld, MuJoCo) is optional and heavy; imported only when used.
                import mujoco

                cam = mujoco.mj_name2id(env.model, mujoco.mjtObj.mjOBJ_CAMERA, self.cfg.camera)
                env.model.cam_pos[cam] = self.cfg.camera_pos
            self.env, self.env_name = env, name
        return self.env

    def _obs(self, raw: np.ndarray, render: bool = True) -> base.Obs:
        """``render`` False leaves the images out: rendering is ~all of a step's cost."""
        images = {}
        if self.cfg.render and render:
            img = self.env.render()
            images["main"] = np.ascontiguousarray(img[::-1] if self.cfg.flip else img)
        self.last_raw = raw
        state = raw[:4] if self.cfg.state == "hand" else raw
        return base.Obs(images=images, state=state.astype(np.float32))

    def reset(self, task: int, trial: int) -> tuple[base.Obs, str]:
        name = self.names[task]
        env = self._make(name)
        env.set_task(self._goals[name][trial])
        raw, _ = env.reset()
        for _ in range(self.cfg.warmup_steps):
            raw, *_ = env.step(np.zeros(4, np.float32))
        self.prev_success = False
        return self._obs(raw), INSTRUCTIONS[name]

    def step(self, action, observe: bool = True) -> base.StepOut:
        raw, shaped, _, truncated, info = self.env.step(np.asarray(action, np.float32))
        success = bool(info["success"] > 0)
        dense = self.cfg.reward == "dense"
        reward = float(shaped) / 10.0 if dense else float(success) - float(self.prev_success)
        terminated = success and not dense
        self.prev_success = success
        return base.StepOut(self._obs(raw, render=observe), reward, terminated, bool(truncated), success)

    def observe(self) -> base.Obs:
        """The observation of the current state (the last step's: MuJoCo renders mjData as it is)."""
        return self._obs(self.last_raw)

    def close(self):
        if self.env is not None:
            self.env.close()
            self.env = None


def expert_actions(task_names: list[str], full_states: np.ndarray) -> np.ndarray:
    """Scripted expert actions (N, 4) from MetaWorld's per-task policies.

    Args:
      task_names: N task names (e.g. ``cfg.task_names()[task]`` of each env's init id).
      full_states: (N, 39) observations; needs ``MetaWorldConfig(state="full")``.
    """
    # Late: MetaWorld's scripted experts load only when demos are collected.
    from metaworld.policies import ENV_POLICY_MAP

    states = np.asarray(full_states, np.float64)
    if states.ndim != 2 or states.shape[1] != 39:
        raise ValueError(f"experts need the full (N, 39) state (state='full'), got shape {states.shape}")
    out = np.zeros((len(task_names), 4), np.float32)
    for i, name in enumerate(task_names):
        if name not in ENV_POLICY_MAP:
            raise ValueError(f"no scripted expert for task {name!r}")
        out[i] = np.clip(ENV_POLICY_MAP[name]().get_action(states[i]), -1, 1)
    return out


def mt50_average(success_by_task: dict[str, float]) -> float:
    """MT50 "Avg.": the mean over the four difficulty groups of each group's mean success rate."""
    missing = [n for g in DIFFICULTY.values() for n in g if n not in success_by_task]
    if missing:
        raise ValueError(f"success rates missing for {len(missing)} tasks, e.g. {missing[:3]}")
    return float(np.mean([np.mean([success_by_task[n] for n in g]) for g in DIFFICULTY.values()]))
