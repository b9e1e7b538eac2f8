"""PPO with Flow-Noise on ManiSkill3 PutOnPlateInScene25Main-v3 (WidowX), π0 or π0.5.

    python -m pirl.train --config=configs/maniskill_ppo.py --workdir=runs/maniskill_ppo \\
        --config.model.checkpoint=hf://RLinf/RLinf-Pi0-ManiSkill-25Main-SFT
    python -m pirl.train --config=configs/maniskill_ppo.py:pi05 --workdir=runs/maniskill_ppo_pi05 \\
        --config.model.checkpoint=hf://RLinf/RLinf-Pi05-ManiSkill-25Main-SFT
    python -m pirl.train --config=configs/maniskill_ppo.py:shrink --workdir=runs/maniskill_tiny

Arguments (comma-separated): pi05; shrink (tiny random model, few envs, 64² renders, and
PickCube-v1 instead of the Bridge scene, whose assets are a separate download; needs no
checkpoint).

On a GPU machine ``--config.env.backend=gpu`` simulates each worker's envs as one CUDA-batched
ManiSkill env (the reference's setup); ``--config.env.reward_mode=dense`` swaps the success reward
for the task's shaped one. The controller is the scene's registered one (``env.control_mode``).

A real run must name its starting weights with ``--config.model.checkpoint`` and needs ManiSkill's
bridge_v2_real2sim assets (MS_ASSET_DIR). The reference's table starts from its few-shot SFT
checkpoints hf://RLinf/RLinf-Pi0-ManiSkill-25Main-SFT (π0) and hf://RLinf/RLinf-Pi05-ManiSkill-25Main-SFT
(π0.5); its RL results are published as …-RL-FlowNoise / …-RL-FlowSDE, which carry their critic
(loaded when it fits policy.value_hidden).
Only the action expert, projections and heads train, as in the reference; see
configs/libero_ppo.py for full fine-tuning with FSDP.
"""

from __future__ import annotations

import ml_collections

from configs import common

ARGS = {"pi05": (), "shrink": ()}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, ARGS)
    pi05 = bool(args.get("pi05"))
    c = common.defaults()
    common.set_model(c, pi05)
    c.model.action_horizon = 8  # the reference's ManiSkill models predict 8 steps, execute 5

    # Auto-reset: every env restarts as soon as its episode ends, so a rollout is a fixed window
    # of 80 env steps; truncated and terminated chunks both bootstrap from V(final obs).
    # One 640×480 third-person camera as in the reference. No no-op warm-up (the reference has
    # none for this scene). SAPIEN has no one-renderer-per-process limit: 20 envs per worker.
    c.env.update(
        sim="maniskill",
        task="PutOnPlateInScene25Main-v3",
        num_envs=320,
        num_workers=16,
        num_stages=2,
        auto_reset=True,
        max_steps=80,
        num_trials=1000,
        image_size=(480, 640),
        warmup_steps=0,
    )
    c.advantage.update(bootstrap="always", gamma=0.99, gae_lambda=0.95)
    # Flow-Noise: learned std head, all K steps stochastic (joint log-prob), entropy bonus. π0
    # keeps per-element ratios; the reference's π0.5 recipe takes one ratio per chunk and 5 epochs.
    c.policy.update(
        num_action_chunks=5,
        action_env_dim=7,
        num_steps=4,
        noise_method="noise",
        joint_logprob=True,
        logprob_type="chunk_level" if pi05 else "token_level",
    )
    c.policy.detach_critic_input = not pi05

    # 320 envs × 1 rollout epoch × 16 chunk steps = 5120 samples: one minibatch per epoch.
    c.train.update(iterations=1000, rollout_epochs=1, save_every=50, eval_every=10)
    c.rl.update(
        lr=7.91e-6,
        value_lr=1.55e-4,
        trainable="expert_only",
        update_epochs=5 if pi05 else 4,
        minibatch_size=5120,
        micro_batch_size=32,
        clip_eps=0.2,
        entropy_bonus=0.005,
    )
    # Reference eval: 320 episodes on fixed seeds.
    c.eval.update(num_envs=320, num_workers=16, num_trials=320)
    if args.get("shrink"):
        common.shrink(c)
        c.env.task = "PickCube-v1"  # runs offline, unlike the Bridge-asset scene
        c.env.control_mode = "pd_ee_delta_pose"  # Panda's 7-d end-effector deltas, like the WidowX
    return c
