"""A tiny deterministic numpy simulator that speaks the Sim protocol, for tests of pool and rollout
code where a physics engine would only add minutes.

Dynamics: the state is a point ``x`` in R^A that starts at a position fixed by (task, trial); an
action moves it by ``0.1 * clip(action, -1, 1)``; the episode succeeds (terminates, reward 1) when
``|x - goal|_inf < 0.05`` with ``goal = 0``. Images encode (task, trial, step) so tests can tell
episodes and steps apart. ``sleep_s`` makes a step cost wall time (for pipelining and crash tests).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from pirl.envs import base


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    num_tasks: int = 3
    num_trials: int = 5
    action_dim: int = 2
    max_steps: int = 20
    image_size: int = 8
    cameras: tuple[str, ...] = ("main",)
    sleep_s: float = 0.0

    def spec(self) -> base.EnvSpec:
        return base.EnvSpec(
            cameras=tuple(base.CameraSpec(c, self.image_size, self.image_size) for c in self.cameras),
            state_dim=self.action_dim,
            action_dim=self.action_dim,
            max_steps=self.max_steps,
            num_tasks=self.num_tasks,
            num_trials=self.num_trials,
        )

    def __call__(self, worker_index: int, num_envs: int) -> base.SerialGroup:
        """Pool factory: M toy sims."""
        return base.SerialGroup([ToySim(self) for _ in range(num_envs)])


class ToySim:
    def __init__(self, cfg: ToyConfig):
        self.cfg, self.spec = cfg, cfg.spec()
        self.x = np.zeros(cfg.action_dim, np.float32)
        self.task = self.trial = self.t = 0

    def start_position(self, task: int, trial: int) -> np.ndarray:
        rng = np.random.default_rng([task, trial])
        return rng.uniform(-0.5, 0.5, self.cfg.action_dim).astype(np.float32)

    def _obs(self) -> base.Obs:
        s = self.cfg.image_size
        images = {}
        for k, cam in enumerate(self.cfg.cameras):
            img = np.zeros((s, s, 3), np.uint8)
            img[..., 0] = self.task * 10 + k
            img[..., 1] = self.trial
            img[..., 2] = self.t % 256
            images[cam] = img
        return base.Obs(images=images, state=self.x.copy())

    def reset(self, task: int, trial: int) -> tuple[base.Obs, str]:
        self.task, self.trial, self.t = task, trial, 0
        self.x = self.start_position(task, trial)
        return self._obs(), f"move the point to the origin (task {task})"

    def step(self, action) -> base.StepOut:
        if self.cfg.sleep_s:
            time.sleep(self.cfg.sleep_s)
        self.t += 1
        self.x = (self.x + 0.1 * np.clip(np.asarray(action, np.float32), -1, 1)).astype(np.float32)
        success = bool(np.abs(self.x).max() < 0.05)
        return base.StepOut(self._obs(), float(success), success, False, success)

    def close(self):
        pass
