"""MetaWorld v3 (MuJoCo) adapter: MT50, ML45 train/test and single tasks.

Init id (task, trial): task indexes ``MetaWorldConfig.task_names()``; trial indexes the 50 goal
variations that ``metaworld.MT1(name, seed)`` samples, so a given (seed, task, trial) is one fixed
object/goal layout in every process.

Observation, as the reference serves MetaWorld to its models: one camera image and a state of
either the hand: ``obs[:4]`` = end-effector xyz + gripper opening (what the VLA sees), or ``full``:
the 39-d MetaWorld vector (what the scripted experts need). The default camera is "corner2" moved
to (0.75, 0.075, 0.7), and its render is rotated 180 degrees (``render()[::-1, ::-1]``): the corner
cameras are rolled about -176 degrees from world-up, so gymnasium's upright frame shows the scene
upside down and mirrored (RLinf rlinf/envs/metaworld/metaworld_env.py ``MetaWorldEnv._wrap_obs``,
its toolkits/standalone_eval_scripts/openpi/metaworld_eval.py, and LeRobot's
src/lerobot/envs/metaworld.py ``MetaworldEnv._format_raw_obs`` all do this). The prompt is the
reference's task description (``INSTRUCTIONS``). Action: 4-d in [-1, 1] (xyz delta + gripper).
Reward: relative success, ``success_t - success_{t-1}``, so +1 on the first success step; the
episode terminates on success. ``reward="dense"`` instead passes MetaWorld's shaped reward scaled
to [0, 1] (it is in [0, 10]) and runs every episode to ``max_steps``: terminating on success would
cut off the reward of staying at the goal. Success is reported either way.

Every sim renders through its own GL context: gymnasium's renderer draws with whichever context is
current, which is the most recently created one in the process, so several sims in one worker
(or one sim after another's context was freed) would otherwise draw each other's scene.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from pirl.envs import base

# The reference's task descriptions, verbatim and in its order (RLinf rlinf/envs/metaworld/
# metaworld_config.json TASK_DESCRIPTIONS; LeRobot's src/lerobot/envs/metaworld_config.json has the
# same 50 strings): the prompts its MetaWorld checkpoints, and LeRobot's MetaWorld dataset, were
# trained with. MT50 task ids follow this order, as the reference's do.
INSTRUCTIONS: dict[str, str] = {
    "assembly-v3": "Pick up a nut and place it onto a peg",
    "basketball-v3": "Dunk the basketball into the basket",
    "bin-picking-v3": "Grasp the puck from one bin and place it into another bin",
    "box-close-v3": "Grasp the cover and close the box with it",
    "button-press-topdown-v3": "Press a button from the top",
    "button-press-topdown-wall-v3": "Bypass a wall and press a button from the top",
    "button-press-v3": "Press a button",
    "button-press-wall-v3": "Bypass a wall and press a button",
    "coffee-button-v3": "Push a button on the coffee machine",
    "coffee-pull-v3": "Pull a mug from a coffee machine",
    "coffee-push-v3": "Push a mug under a coffee machine",
    "dial-turn-v3": "Rotate a dial 180 degrees",
    "disassemble-v3": "Pick a nut out of a peg",
    "door-close-v3": "Close a door with a revolving joint",
    "door-lock-v3": "Lock the door by rotating the lock clockwise",
    "door-open-v3": "Open a door with a revolving joint",
    "door-unlock-v3": "Unlock the door by rotating the lock counter-clockwise",
    "hand-insert-v3": "Insert the gripper into a hole",
    "drawer-close-v3": "Push and close a drawer",
    "drawer-open-v3": "Open a drawer",
    "faucet-open-v3": "Rotate the faucet counter-clockwise",
    "faucet-close-v3": "Rotate the faucet clockwise",
    "hammer-v3": "Hammer a screw on the wall",
    "handle-press-side-v3": "Press a handle down sideways",
    "handle-press-v3": "Press a handle down",
    "handle-pull-side-v3": "Pull a handle up sideways",
    "handle-pull-v3": "Pull a handle up",
    "lever-pull-v3": "Pull a lever down 90 degrees",
    "peg-insert-side-v3": "Insert a peg sideways",
    "pick-place-wall-v3": "Pick a puck, bypass a wall and place the puck",
    "pick-out-of-hole-v3": "Pick up a puck from a hole",
    "reach-v3": "Reach a goal position",
    "push-back-v3": "Push the puck to a goal",
    "push-v3": "Push the puck to a goal",
    "pick-place-v3": "Pick and place a puck to a goal",
    "plate-slide-v3": "Slide a plate into a cabinet",
    "plate-slide-side-v3": "Slide a plate into a cabinet sideways",
    "plate-slide-back-v3": "Get a plate from the cabinet",
    "plate-slide-back-side-v3": "Get a plate from the cabinet sideways",
    "peg-unplug-side-v3": "Unplug a peg sideways",
    "soccer-v3": "Kick a soccer into the goal",
    "stick-push-v3": "Grasp a stick and push a box using the stick",
    "stick-pull-v3": "Grasp a stick and pull a box with the stick",
    "push-wall-v3": "Bypass a wall and push a puck to a goal",
    "reach-wall-v3": "Bypass a wall and reach a goal",
    "shelf-place-v3": "Pick and place a puck onto a shelf",
    "sweep-into-v3": "Sweep a puck into a hole",
    "sweep-v3": "Sweep a puck off the table",
    "window-open-v3": "Push and open a window",
    "window-close-v3": "Push and close a window",
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
      rotate180: rotate the render by 180 degrees (``[::-1, ::-1]``), the reference's orientation.
      fast_render: turn off shadows and multisampling (~10x faster on CPU renderers: 7 -> 70 frames/s
        at 224^2 on llvmpipe). The reference renders with MuJoCo's defaults (shadows on), so images
        then differ from those its checkpoints were trained on (~15% of pixels by more than 20/255).
      state: "hand" (4-d: xyz + gripper) or "full" (39-d MetaWorld observation).
      max_steps: episode length limit, counted after the warm-up.
      num_trials: goal variations per task (<= 50).
      warmup_steps: zero-action steps after reset (lets objects settle), not counted; the first
        observation is that of the last one. 16 is the reference's: ``MetaWorldEnv.reset`` steps
        the reset envs 15 times (``RESET_STEP``), then once more to read the observation.
      seed: seed of MetaWorld's goal sampling; every process must use the same one.
      reward: "success" (sparse, terminates on success) or "dense" (shaped, see the module doc).
    """

    benchmark: str = "MT50"
    image_size: tuple[int, int] = (128, 128)
    render: bool = True
    camera: str = "corner2"
    camera_pos: tuple[float, float, float] | None = (0.75, 0.075, 0.7)
    rotate180: bool = True
    fast_render: bool = False
    state: str = "hand"
    max_steps: int = 100
    num_trials: int = 50
    warmup_steps: int = 16
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
            if self.cfg.fast_render:
                # Both are read when the renderer is created, so set them before the first render.
                env.model.vis.quality.shadowsize = 0
                env.model.vis.quality.offsamples = 0
            if self.cfg.camera_pos is not None:
                # Late: the simulator (MetaWorld, MuJoCo) is optional and heavy; imported only when used.
                import mujoco

                cam = mujoco.mj_name2id(env.model, mujoco.mjtObj.mjOBJ_CAMERA, self.cfg.camera)
                env.model.cam_pos[cam] = self.cfg.camera_pos
            self.env, self.env_name = env, name
        return self.env

    def _render(self) -> np.ndarray:
        """The camera image (H, W, 3) uint8 as gymnasium returns it, drawn in this sim's own GL
        context (made current first: gymnasium only does so when one env holds several viewers)."""
        viewer = self.env.mujoco_renderer._get_viewer(self.env.render_mode)  # made on first use
        viewer.make_context_current()
        return self.env.render()

    def _obs(self, raw: np.ndarray, render: bool = True) -> base.Obs:
        """``render`` False leaves the images out: rendering is ~all of a step's cost."""
        images = {}
        if self.cfg.render and render:
            img = self._render()
            images["main"] = np.ascontiguousarray(img[::-1, ::-1] if self.cfg.rotate180 else img)
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
        with warnings.catch_warnings():
            # The experts' gains overshoot on purpose; the clip below is the env's own.
            warnings.filterwarnings("ignore", message="Constant\\(s\\) may be too high", category=UserWarning)
            out[i] = np.clip(ENV_POLICY_MAP[name]().get_action(states[i]), -1, 1)
    return out


def mt50_average(success_by_task: dict[str, float]) -> float:
    """MT50 "Avg.": the mean over the four difficulty groups of each group's mean success rate."""
    missing = [n for g in DIFFICULTY.values() for n in g if n not in success_by_task]
    if missing:
        raise ValueError(f"success rates missing for {len(missing)} tasks, e.g. {missing[:3]}")
    return float(np.mean([np.mean([success_by_task[n] for n in g]) for g in DIFFICULTY.values()]))
