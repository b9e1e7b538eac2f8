"""What one experiment is made of, as frozen dataclasses (``pirl.envsetup`` builds its simulators from them).

A config file (configs/*.py) is an ml_collections ConfigDict with one section per dataclass here;
``pirl.cli`` turns it into an ``Experiment`` so that nothing below ever sees a ConfigDict.

Sections: model (architecture + where its weights, norm stats and tokenizer come from), env (which
simulator, how many envs and workers), policy (``rl.flow.FlowPolicyConfig``), rl
(``rl.update.UpdateConfig`` + advantage options), train (the loop: iterations, logging, saving),
eval, sft, mesh.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any

from pirl import ranges, sharding
from pirl.envs import libero, metaworld
from pirl.models import pi0
from pirl.rl import flow
from pirl.rl import update as upd

SIMS = ("metaworld", "libero", "maniskill", "toy")
BOOTSTRAP = ("truncated", "always", "none")
WANDB_MODES = ("online", "offline", "shared", "disabled")  # wandb.init(mode=...), wandb_settings.Settings.mode
METAWORLD_EXPERT = "metaworld_expert"  # sft.dataset: demos from MetaWorld's scripted experts


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """π0 / π0.5 architecture and the origin of its weights.

    checkpoint: openpi-layout directory (local, hf://, gs://) whose params are loaded; "" starts
      from random weights (only sensible for tiny models). A pirl.sft output is such a directory.
    asset_id: norm stats under <checkpoint>/assets/<asset_id>; "" takes the only one present.
      Without a checkpoint the norm stats are the identity.
    tokenizer: "paligemma" (downloaded once), "embedded" (built in-process, for small models), or
      a SentencePiece .model path.
    discrete_state_input: whether π0.5's prompt carries the binned state
      ("Task: …, State: …;\\nAction: ") or is openpi's plain BOS + instruction + "\\n". "" the
      model's default (openpi's Pi0Config: on for π0.5; π0 has a continuous state token instead),
      "on" or "off" to choose (π0 cannot take "on"). A checkpoint is only right with the convention
      it was trained with: openpi's pi05_libero and the reference's π0.5 LIBERO, ManiSkill and
      MetaWorld checkpoints use "off" (their recipes here set it). This is the field to set from a
      checkpoint's own config where it records the convention.
    """

    pi05: bool = False
    paligemma_variant: str = "gemma_2b"
    action_expert_variant: str = "gemma_300m"
    vision_variant: str = "So400m/14"
    image_size: int = 224
    action_horizon: int = 50
    max_token_len: int = 0  # 0: the model's default (48 π0, 200 π0.5)
    vocab_size: int = 0  # 0: PaliGemma's
    action_dim: int = 32  # padded state/action width; small models may use the env's own
    dtype: str = "bfloat16"
    remat: bool = True
    checkpoint: str = ""
    asset_id: str = ""
    tokenizer: str = "paligemma"
    discrete_state_input: str = ""

    def __post_init__(self):
        ranges.check(
            "model",
            self,
            image_size=">= 1",
            action_horizon=">= 1",
            max_token_len=">= 0",
            vocab_size=">= 0",
            action_dim=">= 1",
        )
        if self.discrete_state_input not in ("", "on", "off"):
            raise ValueError(f"model.discrete_state_input must be '', 'on' or 'off', got {self.discrete_state_input!r}")
        if self.discrete_state_input == "on" and not self.pi05:
            raise ValueError("model.discrete_state_input='on' needs model.pi05=True (π0 has a continuous state token)")

    def pi0_config(self) -> pi0.Pi0Config:
        kw: dict[str, Any] = dict(
            pi05=self.pi05,
            paligemma_variant=self.paligemma_variant,
            action_expert_variant=self.action_expert_variant,
            vision_variant=self.vision_variant,
            image_size=self.image_size,
            action_horizon=self.action_horizon,
            action_dim=self.action_dim,
            dtype=self.dtype,
            remat=self.remat,
        )
        if self.max_token_len:
            kw["max_token_len"] = self.max_token_len
        if self.vocab_size:
            kw["vocab_size"] = self.vocab_size
        if self.discrete_state_input:
            kw["discrete_state_input"] = self.discrete_state_input == "on"
        return pi0.Pi0Config(**kw)


@dataclasses.dataclass(frozen=True)
class EnvSection:
    """Which simulator and how the host pool runs it.

    task: MetaWorld benchmark or task ("MT50", "ML45-train", "reach-v3"), LIBERO suite
      ("libero_spatial", ..., "libero_130"), ManiSkill env id(s) comma-separated, or "" (toy).
    num_envs: envs of the whole job; num_workers processes, num_envs / num_workers envs each. On
      several hosts each runs num_envs / hosts envs on num_workers / hosts workers.
    num_stages: 2 overlaps inference for one half of the envs with stepping of the other.
    group_size: GRPO's G: G consecutive envs start from the same init state.
    tasks: restrict training to these task ids (empty: all).
    reward_mode: "" the success reward of the sim; "dense" the task's shaped reward (MetaWorld,
      ManiSkill; ManiSkill also "normalized_dense", and "grasp" the reference's grasp-and-place
      reward, ``maniskill.GraspReward``).
    timeout_s: a worker silent this long during a command is replaced (its episodes dropped); 0
      derives the limit from the workers' measured step and reset times (pirl/envs/pool.py).
    control_mode, backend, finish_chunks: ManiSkill only. control_mode "" is the task's registered
      controller; backend "gpu" simulates each worker's envs as one CUDA-batched env;
      finish_chunks keeps executing the rest of a chunk after an episode ends, counting those
      steps' rewards, as the reference's ManiSkill rollouts do (``pool.PoolConfig``).
    fast_render: MetaWorld only: no shadows or multisampling (~10× faster on CPU renderers, but not
      the images the reference's checkpoints were trained on; ``metaworld.MetaWorldConfig``).
    """

    sim: str = "metaworld"
    task: str = "MT50"
    num_envs: int = 8
    num_workers: int = 2
    num_stages: int = 1
    auto_reset: bool = False
    group_size: int = 1
    max_steps: int = 100
    num_trials: int = 10
    image_size: tuple[int, int] = (224, 224)
    render: bool = True
    camera: str = ""  # MetaWorld/ManiSkill camera; "" the adapter's default
    warmup_steps: int = 15
    tasks: tuple[int, ...] = ()
    gl: str = ""  # MUJOCO_GL for workers: "egl", "osmesa" or "" (leave as is)
    seed: int = 0
    timeout_s: float = 0.0
    control_mode: str = ""
    reward_mode: str = ""
    backend: str = "cpu"
    finish_chunks: bool = False
    fast_render: bool = False

    def __post_init__(self):
        ranges.one_of("env", self, sim=SIMS)
        ranges.check(
            "env",
            self,
            num_envs=">= 1",
            num_workers=">= 1",
            num_stages=">= 1",
            group_size=">= 1",
            max_steps=">= 1",
            num_trials=">= 1",
            image_size=">= 1",
            warmup_steps=">= 0",
            tasks=">= 0",
            seed=">= 0",
            timeout_s=">= 0",
        )
        if self.num_stages > self.num_workers:
            raise ValueError(f"env.num_stages={self.num_stages} exceeds env.num_workers={self.num_workers}")
        check_task(self.sim, self.task)
        if self.sim != "maniskill":
            for name, unset in (("control_mode", ""), ("backend", "cpu"), ("finish_chunks", False)):
                if getattr(self, name) != unset:
                    raise ValueError(f"env.{name} applies to ManiSkill only (env.sim={self.sim!r})")
        if self.sim != "metaworld" and self.fast_render:
            raise ValueError(f"env.fast_render applies to MetaWorld only (env.sim={self.sim!r})")
        if self.sim in ("libero", "toy") and self.reward_mode:
            raise ValueError(f"env.reward_mode: {self.sim} has only its success reward")
        if self.sim == "metaworld" and self.reward_mode not in ("", "sparse", "dense"):
            raise ValueError(f"env.reward_mode for MetaWorld must be '', 'sparse' or 'dense', got {self.reward_mode!r}")
        if self.backend not in ("cpu", "gpu"):
            raise ValueError(f"env.backend must be 'cpu' or 'gpu', got {self.backend!r}")
        modes = ("", "sparse", "dense", "normalized_dense", "grasp")
        ranges.one_of("env", self, reward_mode=modes)
        if self.num_envs % self.num_workers:
            raise ValueError(f"env.num_envs={self.num_envs} is not a multiple of env.num_workers={self.num_workers}")
        if self.num_envs % self.group_size:
            raise ValueError(f"env.num_envs={self.num_envs} is not a multiple of env.group_size={self.group_size}")


@dataclasses.dataclass(frozen=True)
class AdvantageConfig:
    gamma: float = 0.99
    gae_lambda: float = 0.95
    normalize: bool = True  # PPO: (A − mean)/(std + 1e-5) over valid samples
    filter_groups: bool = False  # GRPO: drop groups whose mean score is outside [low, high]
    filter_low: float = 0.1
    filter_high: float = 0.9
    bootstrap: str = "truncated"  # auto-reset only: add γ·V(final obs) on "truncated" | "always" | "none"

    def __post_init__(self):
        ranges.check("advantage", self, gamma="[0, 1]", gae_lambda="[0, 1]", filter_low="finite", filter_high="finite")
        if self.filter_low > self.filter_high:
            raise ValueError(f"advantage.filter_low={self.filter_low} exceeds advantage.filter_high={self.filter_high}")
        ranges.one_of("advantage", self, bootstrap=BOOTSTRAP)


@dataclasses.dataclass(frozen=True)
class TrainSection:
    """The outer loop.

    rollout_epochs: rollouts (each one episode per env) collected per iteration before updating.
    eval_every / save_every: in iterations; 0 turns it off (a final save always happens).
    """

    iterations: int = 1000
    rollout_epochs: int = 1
    seed: int = 0
    eval_every: int = 0
    save_every: int = 10
    keep_checkpoints: int = 3
    videos: bool = False
    video_every: int = 0  # iterations between training videos (0: only eval videos)
    tensorboard: bool = True
    wandb_project: str = ""  # "" disables wandb
    wandb_mode: str = "offline"
    progress: bool = True

    def __post_init__(self):
        ranges.check(
            "train",
            self,
            iterations=">= 1",
            rollout_epochs=">= 1",
            seed=">= 0",
            eval_every=">= 0",
            save_every=">= 0",
            keep_checkpoints=">= 1",
            video_every=">= 0",
        )
        ranges.one_of("train", self, wandb_mode=WANDB_MODES)


@dataclasses.dataclass(frozen=True)
class EvalSection:
    """Deterministic evaluation: every (task, trial) pair, ODE sampling from fixed noise.

    num_trials: init states per task; num_envs in parallel (all hosts together). replan: executed
    actions per chunk (0 = the training chunk). max_steps 0 = the env section's. seed fixes the
    sampling noise.
    protocol "openpi_libero": openpi's LIBERO evaluation (examples/libero/main.py ``eval_libero``),
    whatever the recipe's RL settings: replan 5, 10 no-op wait steps, its per-suite step limits
    (``libero.OPENPI_MAX_STEPS``: spatial 220, object 280, goal 300, 10 520, 90 400), 50 trials,
    256² renders, and its seeding: numpy seeded with 7 when a task starts, then trials 0..49 run in
    order on one env, each reset drawing on from the last. So each evaluated task gets one env (and
    one worker) that runs its trials in order (``envsetup.resolve_eval``); num_envs/num_workers are set so.
    """

    num_envs: int = 8
    num_workers: int = 2
    num_trials: int = 10
    tasks: tuple[int, ...] = ()
    max_steps: int = 0  # −1: the simulator's own per-task limit (LIBERO's per-suite steps)
    warmup_steps: int = -1  # −1: the env section's
    replan: int = 0
    seed: int = 7
    videos: bool = False
    protocol: str = ""

    def __post_init__(self):
        ranges.check(
            "eval",
            self,
            num_envs=">= 1",
            num_workers=">= 1",
            num_trials=">= 1",
            tasks=">= 0",
            max_steps=">= -1",
            warmup_steps=">= -1",
            replan=">= 0",
            seed=">= 0",
        )
        if self.protocol not in ("", "openpi_libero"):
            raise ValueError(f"eval.protocol must be '' or 'openpi_libero', got {self.protocol!r}")
        if self.protocol == "openpi_libero":
            for name, value in (
                ("replan", libero.OPENPI_REPLAN_STEPS),
                ("warmup_steps", libero.OPENPI_WAIT_STEPS),
                ("max_steps", -1),
                ("num_trials", libero.OPENPI_TRIALS),
                ("seed", libero.OPENPI_SEED),
            ):
                object.__setattr__(self, name, value)
        if self.num_envs % self.num_workers:
            raise ValueError(f"eval.num_envs={self.num_envs} is not a multiple of eval.num_workers={self.num_workers}")


@dataclasses.dataclass(frozen=True)
class SFTSection:
    """Where the demonstrations come from and how the model is fitted to them.

    dataset: "metaworld_expert" (scripted experts on env.task, through a 2-worker pool) or the path
      of a local LeRobot dataset (image_keys / state_key / action_key name its features).
    num_demos: training episodes; holdout_demos more are kept out of training and scored with a
      fixed-noise flow loss at every log step (0: no held-out score).
    action_noise: std of Gaussian noise added to the experts' actions (more varied demos).
    demo_max_steps: episode limit while collecting expert demos (0: env.max_steps). A tight RL
      time limit would otherwise keep only the demos of the nearest goals.
    lr: AdamW peak learning rate, reached after warmup_steps, cosine-decayed to lr/10 at `steps`.
    augment: openpi's image augmentation (crop, rotation, color jitter) on every training batch.
    asset_id: the norm stats go to <out_dir>/assets/<asset_id>/norm_stats.json.
    """

    dataset: str = METAWORLD_EXPERT
    num_demos: int = 50
    holdout_demos: int = 0
    action_noise: float = 0.0
    demo_max_steps: int = 0
    image_keys: tuple[str, ...] = ()
    state_key: str = "observation.state"
    action_key: str = "action"
    steps: int = 2000
    batch_size: int = 32
    lr: float = 2.5e-5
    warmup_steps: int = 100
    weight_decay: float = 1e-10
    grad_clip: float = 1.0
    augment: bool = True
    seed: int = 0
    log_every: int = 100
    asset_id: str = "pirl/sft"

    def __post_init__(self):
        ranges.check(
            "sft",
            self,
            num_demos=">= 1",
            holdout_demos=">= 0",
            action_noise=">= 0",
            demo_max_steps=">= 0",
            steps=">= 1",
            batch_size=">= 1",
            lr=">= 0",
            warmup_steps=">= 0",
            weight_decay=">= 0",
            grad_clip="> 0",
            seed=">= 0",
            log_every=">= 1",
        )
        if not self.asset_id:
            raise ValueError("sft.asset_id must name the norm stats' asset directory")


@dataclasses.dataclass(frozen=True)
class Experiment:
    model: ModelSpec
    env: EnvSection
    policy: flow.FlowPolicyConfig
    rl: upd.UpdateConfig
    advantage: AdvantageConfig
    train: TrainSection
    eval: EvalSection
    mesh: sharding.MeshConfig

    def __post_init__(self):
        check(self)


def check(exp: Experiment) -> None:
    """Cross-section consistency, with the fields to change named."""
    model = exp.model.pi0_config()
    if exp.policy.num_action_chunks > model.action_horizon:
        raise ValueError(
            f"policy.num_action_chunks={exp.policy.num_action_chunks} exceeds model.action_horizon="
            f"{model.action_horizon}"
        )
    if exp.eval.protocol == "openpi_libero" and exp.env.sim != "libero":
        raise ValueError(f"eval.protocol='openpi_libero' evaluates LIBERO, but env.sim={exp.env.sim!r}")
    if exp.rl.algorithm == "grpo" and exp.env.group_size < 2:
        raise ValueError("GRPO needs env.group_size >= 2 (envs per group sharing an init state)")
    if exp.rl.algorithm == "ppo" and exp.policy.value_source == "none":
        raise ValueError("PPO needs a critic: set policy.value_source to 'expert' or 'vlm'")
    n = rollout_samples(exp)
    if n % exp.rl.minibatch_size:
        raise ValueError(
            f"a rollout holds {n} samples (train.rollout_epochs {exp.train.rollout_epochs} × env.num_envs "
            f"{exp.env.num_envs} × {chunk_steps(exp)} chunk steps); rl.minibatch_size={exp.rl.minibatch_size} "
            f"must divide it"
        )


def chunk_steps(exp: Experiment) -> int:
    """Chunk steps per episode: ⌈max_steps / executed chunk⌉."""
    return math.ceil(exp.env.max_steps / exp.policy.num_action_chunks)


def rollout_samples(exp: Experiment) -> int:
    return exp.train.rollout_epochs * exp.env.num_envs * chunk_steps(exp)


def check_task(sim: str, task: str) -> None:
    """Rejects a MetaWorld benchmark/task or LIBERO suite name that does not exist, from the names
    the adapters know without importing a simulator (config time, before any set-up)."""
    if sim == "metaworld":
        valid = ["MT50", "ML45-train", "ML45-test", *metaworld.INSTRUCTIONS]
        if task not in valid:
            raise ValueError(
                f"env.task={task!r} is not a MetaWorld benchmark or task{closest(task, valid)}: use MT50, "
                "ML45-train, ML45-test or a task name such as reach-v3"
            )
    elif sim == "libero":
        valid = [*libero.SUITES, libero.UNION]
        if task not in valid:
            raise ValueError(f"env.task={task!r} is not a LIBERO suite{closest(task, valid)}: use one of {valid}")
    elif sim == "maniskill" and not task.strip():
        raise ValueError("env.task must name ManiSkill env id(s), comma-separated")


def closest(name: str, valid) -> str:
    """' (did you mean a, b?)' for a mistyped name, or ''."""
    near = difflib.get_close_matches(name, list(valid), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(near)}?)" if near else ""
