"""The batched-environment protocol: what every simulator adapter and the process pool speak.

numpy only; nothing here (or anywhere under pirl/envs) imports JAX.

Axis letters used in shape annotations across pirl/envs:
  N  envs in a pool (all workers)        M  envs inside one worker process
  T  steps in an action chunk            A  action dims
  S  state dims                          H, W  image height, width (channels last, RGB)

Protocol, in three layers:

1. ``Sim`` - one simulator instance living in a worker process. ``reset(task, trial)`` puts it
   in the init state named by the id ``(task, trial)`` (same id -> same first observation, which
   is what GRPO groups need) and returns the first ``Obs`` plus the instruction; ``step(action)``
   returns ``StepOut``. Adapters do their warm-up no-ops inside ``reset``. A Sim whose images are
   costly may also take ``step(action, observe=False)`` (the returned obs then has no images) and
   offer ``observe()`` (the observation of the current state): the worker asks for images only on
   a chunk's last step, and calls ``observe()`` for episodes that ended earlier in the chunk. Only
   each chunk's last observation reaches the policy, so nothing it sees changes.
2. ``SimGroup`` - the M sims of one worker. ``SerialGroup`` wraps M ``Sim`` objects; a GPU-batched
   simulator (ManiSkill on CUDA) implements ``SimGroup`` directly as one vectorized env.
3. ``EnvPool`` (pool.py) - P worker processes x M envs, observations in shared memory.

Episode modes (``EnvSpec`` is per simulator; the mode is a pool setting):
- ``auto_reset=False``: one episode per env per rollout. Once an env's episode ends, later steps
  are skipped and reported with ``valid=False``; ``reset`` starts the next rollout.
- ``auto_reset=True``: an env whose episode ended during a chunk is reset at the END of that chunk
  to its next init id (steps after the end inside the chunk are skipped, ``valid=False``). The last
  observation of the ended episode is kept in ``ChunkResult.final_obs`` for bootstrapping.

Rewards come from the simulator every step; episode bookkeeping (return, length, success_once) is
done by ``EpisodeTracker`` from the per-step arrays so every adapter reports it the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from jaxtyping import Bool, Float32, Int64, UInt8


@dataclasses.dataclass(frozen=True)
class CameraSpec:
    name: str
    height: int
    width: int


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """Static shapes of one simulator's observations and actions.

    Attributes:
      cameras: images in every observation (may be empty: rendering off).
      state_dim: length of the float32 state vector.
      action_dim: length of one action.
      max_steps: an episode is truncated after this many steps (warm-up no-ops not counted).
      num_tasks: valid task ids are 0..num_tasks-1.
      num_trials: valid trial ids are 0..num_trials-1 (the same for every task).
    """

    cameras: tuple[CameraSpec, ...]
    state_dim: int
    action_dim: int
    max_steps: int
    num_tasks: int
    num_trials: int

    def __post_init__(self):
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise ValueError(f"camera names must be unique, got {names}")
        for field in ("state_dim", "action_dim", "max_steps", "num_tasks", "num_trials"):
            if getattr(self, field) < (0 if field == "state_dim" else 1):
                raise ValueError(f"EnvSpec.{field} must be positive, got {getattr(self, field)}")


@dataclasses.dataclass
class Obs:
    """Observation of one env (inside a worker): images {camera: (H, W, 3) uint8}, state (S,)."""

    images: dict[str, UInt8[np.ndarray, "H W 3"]]
    state: Float32[np.ndarray, " S"]


@dataclasses.dataclass
class StepOut:
    obs: Obs
    reward: float
    terminated: bool
    truncated: bool
    success: bool


@dataclasses.dataclass
class BatchObs:
    """Observations of a batch of envs: images {camera: (N, H, W, 3)}, state (N, S), N prompts."""

    images: dict[str, UInt8[np.ndarray, "N H W 3"]]
    state: Float32[np.ndarray, "N S"]
    instruction: list[str]


@dataclasses.dataclass
class ChunkResult:
    """What ``step_chunk`` returns for N envs and a chunk of T actions.

    valid[i, t] is False for steps that were not executed: after the episode ended, or the whole
    chunk of an env whose worker crashed. rewards/terminated/truncated/success are zero there.
    ``episode_*`` describe the episode each env was in during the chunk (after the chunk, before
    any auto-reset). ``done`` = that episode has ended (terminated or truncated) by the chunk end.
    ``crashed`` marks envs whose worker died: their episode is invalid and must be discarded.
    ``final_obs`` (auto-reset only) holds, for envs with ``reset_now``, the last observation of the
    episode that ended; ``obs`` then already shows the new episode.
    """

    obs: BatchObs
    rewards: Float32[np.ndarray, "N T"]
    terminated: Bool[np.ndarray, "N T"]
    truncated: Bool[np.ndarray, "N T"]
    success: Bool[np.ndarray, "N T"]
    valid: Bool[np.ndarray, "N T"]
    done: Bool[np.ndarray, " N"]
    crashed: Bool[np.ndarray, " N"]
    episode_return: Float32[np.ndarray, " N"]
    episode_length: Int64[np.ndarray, " N"]
    success_once: Bool[np.ndarray, " N"]
    reset_now: Bool[np.ndarray, " N"]
    final_obs: BatchObs | None = None


class Sim(Protocol):
    """One simulator instance (see module docstring)."""

    spec: EnvSpec

    def reset(self, task: int, trial: int) -> tuple[Obs, str]: ...

    def step(self, action: Float32[np.ndarray, " A"]) -> StepOut: ...

    def close(self) -> None: ...


class SimGroup(Protocol):
    """The M simulators of one worker."""

    spec: EnvSpec
    num_envs: int

    def reset(self, env_ids: list[int], init_ids: Int64[np.ndarray, "K 2"]) -> list[tuple[Obs, str]]: ...

    def step(self, env_ids: list[int], actions: Float32[np.ndarray, "K A"]) -> list[StepOut]: ...

    def close(self) -> None: ...


class SerialGroup:
    """M independent ``Sim`` objects stepped one after another in the worker process."""

    def __init__(self, sims: list[Sim]):
        if not sims:
            raise ValueError("SerialGroup needs at least one Sim")
        self.sims = sims
        self.spec = sims[0].spec
        self.num_envs = len(sims)
        self.deferred = all(hasattr(s, "observe") for s in sims)

    def reset(self, env_ids, init_ids):
        return [self.sims[i].reset(int(t), int(r)) for i, (t, r) in zip(env_ids, init_ids, strict=True)]

    def step(self, env_ids, actions, observe: bool = True):
        if self.deferred:
            return [self.sims[i].step(a, observe=observe) for i, a in zip(env_ids, actions, strict=True)]
        return [self.sims[i].step(a) for i, a in zip(env_ids, actions, strict=True)]

    def observe(self, env_ids) -> list[Obs]:
        """Current observations of ``env_ids`` (only when ``deferred``: every sim has ``observe``)."""
        return [self.sims[i].observe() for i in env_ids]

    def close(self):
        for s in self.sims:
            s.close()


def check_init_ids(spec: EnvSpec, init_ids: np.ndarray, n: int) -> Int64[np.ndarray, "N 2"]:
    """Validates an (N, 2) array of (task, trial) ids against the spec; returns it as int64."""
    ids = np.asarray(init_ids)
    if ids.shape != (n, 2):
        raise ValueError(f"init_ids must have shape ({n}, 2) = (envs, [task, trial]), got {ids.shape}")
    ids = ids.astype(np.int64)
    bad_task = (ids[:, 0] < 0) | (ids[:, 0] >= spec.num_tasks)
    bad_trial = (ids[:, 1] < 0) | (ids[:, 1] >= spec.num_trials)
    if bad_task.any():
        raise ValueError(f"task id {ids[bad_task, 0][0]} outside [0, {spec.num_tasks}) in init_ids")
    if bad_trial.any():
        raise ValueError(f"trial id {ids[bad_trial, 1][0]} outside [0, {spec.num_trials}) in init_ids")
    return ids


def group_init_ids(
    spec: EnvSpec,
    num_envs: int,
    group_size: int,
    rng: np.random.Generator,
    tasks: Sequence[int] | None = None,
) -> Int64[np.ndarray, "N 2"]:
    """Draws one (task, trial) per group of ``group_size`` consecutive envs (GRPO), uniformly over
    ``tasks`` (default all) x trials; group_size=1 gives independent draws."""
    if num_envs % group_size:
        raise ValueError(f"num_envs={num_envs} is not a multiple of group_size={group_size}")
    chosen = np.asarray(tasks if tasks else range(spec.num_tasks), np.int64)
    if chosen.min() < 0 or chosen.max() >= spec.num_tasks:
        raise ValueError(f"tasks {list(chosen)} are not all in [0, {spec.num_tasks})")
    flat = rng.integers(0, len(chosen) * spec.num_trials, size=num_envs // group_size)
    ids = np.stack([chosen[flat // spec.num_trials], flat % spec.num_trials], axis=1)
    return np.repeat(ids, group_size, axis=0)


def env_rng(seed: int, env_index: int) -> np.random.Generator:
    """The generator that draws auto-reset init ids for one env: depends only on (seed, env)."""
    return np.random.default_rng([seed, env_index])


class EpisodeTracker:
    """Per-env return, length and success_once, updated from each chunk's per-step arrays."""

    def __init__(self, n: int):
        self.ret = np.zeros(n, np.float32)
        self.length = np.zeros(n, np.int64)
        self.success_once = np.zeros(n, bool)

    def start(self, env_mask: Bool[np.ndarray, " N"]):
        self.ret[env_mask] = 0.0
        self.length[env_mask] = 0
        self.success_once[env_mask] = False

    def update(self, rows, rewards, success, valid):
        """Adds a chunk for env indices ``rows`` (n,): rewards (n, T), success and valid (n, T) bool."""
        self.ret[rows] += np.where(valid, rewards, 0.0).sum(axis=1).astype(np.float32)
        self.length[rows] += valid.sum(axis=1)
        self.success_once[rows] |= (success & valid).any(axis=1)
