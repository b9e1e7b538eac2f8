"""Demonstration episodes: the common form SFT trains on, and MetaWorld scripted-expert demos
collected through the EnvPool.

numpy only (the pool's workers run the simulators; this module just steps them).

Axis letters: T steps of an episode, H/W image height/width, S state dims, E env action dims,
N envs in the pool.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from jaxtyping import Bool, Float32, UInt8

from pirl.envs import base, pool
from pirl.envs import metaworld as mw

# The model sees MetaWorld's hand state (end-effector xyz + gripper opening), the first 4 of the
# 39 dims the experts read.
HAND_DIMS = 4


@dataclasses.dataclass
class Episode:
    """One demonstration: the observation before each step and the action taken there.

    images: {camera: uint8 [T, H, W, 3]}; state: float32 [T, S]; actions: float32 [T, E].
    """

    images: dict[str, UInt8[np.ndarray, "T H W 3"]]
    state: Float32[np.ndarray, "T S"]
    actions: Float32[np.ndarray, "T E"]
    instruction: str
    success: bool

    def __post_init__(self):
        steps = len(self.actions)
        if steps < 1 or self.actions.ndim != 2 or self.state.ndim != 2 or len(self.state) != steps:
            raise ValueError(
                f"episode needs state [T, S] and actions [T, E]; got {self.state.shape}, {self.actions.shape}"
            )
        for cam, frames in self.images.items():
            if frames.dtype != np.uint8 or frames.ndim != 4 or len(frames) != steps:
                raise ValueError(
                    f"camera {cam!r}: expected uint8 [{steps}, H, W, 3], got {frames.dtype} {frames.shape}"
                )

    def __len__(self) -> int:
        return len(self.actions)


def _episodes_of_round(
    frames: list[dict[str, np.ndarray]],
    states: list[np.ndarray],
    actions: list[np.ndarray],
    valid: list[Bool[np.ndarray, " N"]],
    instructions: list[str],
    success: Bool[np.ndarray, " N"],
) -> list[Episode]:
    """Cuts the per-step records of one pool rollout into one Episode per env (valid steps only)."""
    valid_tn = np.stack(valid)  # [T, N]
    out = []
    for i in range(valid_tn.shape[1]):
        steps = np.flatnonzero(valid_tn[:, i])
        if len(steps) == 0:
            continue
        out.append(
            Episode(
                images={cam: np.stack([frames[t][cam][i] for t in steps]) for cam in frames[0]},
                state=np.stack([states[t][i, :HAND_DIMS] for t in steps]).astype(np.float32),
                actions=np.stack([actions[t][i] for t in steps]).astype(np.float32),
                instruction=instructions[i],
                success=bool(success[i]),
            )
        )
    return out


def collect_metaworld(
    sim: mw.MetaWorldConfig,
    pool_cfg: pool.PoolConfig,
    num_episodes: int,
    *,
    action_noise: float = 0.0,
    keep_failed: bool = False,
    seed: int = 0,
    max_rounds: int | None = None,
) -> list[Episode]:
    """Runs MetaWorld's scripted experts in the pool until ``num_episodes`` episodes are recorded.

    Every round resets all envs to (task, trial) ids drawn uniformly from ``sim`` and steps them one
    action at a time until each episode ends (success or ``sim.max_steps``). ``action_noise`` adds
    N(0, σ²) to the expert's action (clipped to [-1, 1]) for more varied demos; the noisy action is
    the one recorded. Only successful episodes are kept unless ``keep_failed``. States are stored
    as the 4-d hand state the policy sees; the experts read the full 39-d one (``sim.state`` must
    be "full").

    Raises RuntimeError after ``max_rounds`` rounds (default: enough for a 25% success rate) with
    fewer episodes than asked.
    """
    if sim.state != "full":
        raise ValueError("scripted experts need MetaWorldConfig(state='full'); the hand state is stored")
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    rng = np.random.default_rng(seed)
    names = sim.task_names()
    episodes: list[Episode] = []
    with pool.EnvPool(sim, pool_cfg) as envs:
        n = envs.num_envs
        rounds = max_rounds or 4 * -(-num_episodes // n)
        for _ in range(rounds):
            ids = base.group_init_ids(envs.spec, n, 1, rng)
            obs = envs.reset(ids)
            tasks, instructions = [names[t] for t in ids[:, 0]], list(obs.instruction)
            frames, states, actions, valid = [], [], [], []
            lost = np.zeros(n, bool)  # envs whose worker crashed: their episode is incomplete
            while not envs.done.all():
                act = mw.expert_actions(tasks, obs.state)
                if action_noise > 0:
                    act = np.clip(act + action_noise * rng.standard_normal(act.shape), -1.0, 1.0)
                result = envs.step_chunk(act[:, None, :].astype(np.float32))
                frames.append(obs.images)
                states.append(obs.state)
                actions.append(act)
                valid.append(result.valid[:, 0])
                lost |= result.crashed
                obs = result.obs
            valid = [v & ~lost for v in valid]
            new = _episodes_of_round(frames, states, actions, valid, instructions, result.success_once)
            episodes += [e for e in new if keep_failed or e.success]
            if len(episodes) >= num_episodes:
                return episodes[:num_episodes]
    raise RuntimeError(
        f"collected {len(episodes)} of {num_episodes} expert episodes in {rounds} rounds of {n} envs "
        f"on {sim.benchmark!r}: the experts fail too often (raise max_steps or lower action_noise)"
    )
