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
ManiSkill env (the reference's setup). The reward is the reference's grasp-and-place one
(``env.reward_mode=grasp``); ``sparse`` gives the success reward, ``dense`` the task's shaped one.
The controller is the scene's registered one (``env.control_mode``).

A real run must name its starting weights with ``--config.model.checkpoint`` and needs ManiSkill's
bridge_v2_real2sim assets (MS_ASSET_DIR). The reference's table starts from its few-shot SFT
checkpoints hf://RLinf/RLinf-Pi0-ManiSkill-25Main-SFT (π0) and hf://RLinf/RLinf-Pi05-ManiSkill-25Main-SFT
(π0.5); its RL results are published as …-RL-FlowNoise / …-RL-FlowSDE, which carry their critic
(loaded when it fits policy.value_hidden).
Only the action expert, projections and heads train, as in the reference; see
configs/libero_ppo.py for full fine-tuning with FSDP.

Values are the reference's: each number names its RLinf file (under examples/embodiment/config/)
and key; ``tests/test_config_reference.py`` checks them.
"""

from __future__ import annotations

import ml_collections

from configs import common

ARGS = {"pi05": (), "shrink": ()}

# Reference files (RLinf examples/embodiment/config/): maniskill_ppo_openpi.yaml (π0) and
# maniskill_ppo_openpi_pi05.yaml (π0.5); their defaults model/pi0.yaml, model/pi0_5.yaml and
# env/maniskill_put_on_plate_in_scene_25_main.yaml.


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, ARGS)
    pi05 = bool(args.get("pi05"))
    c = common.defaults()
    common.set_model(c, pi05)
    # actor.model.openpi.action_horizon: 8 (both files); 5 of them execute.
    c.model.action_horizon = 8
    # OpenPi0ForRLActionPrediction.__init__ (RLinf openpi_action_model.py): pi05_maniskill →
    # (1024, 512, 256), pi0_maniskill → (512, 256, 128).
    c.policy.value_hidden = (1024, 512, 256) if pi05 else (512, 256, 128)

    # Auto-reset (env.train.auto_reset: True): every env restarts as soon as its episode ends, so a
    # rollout is a fixed window of 80 env steps (max_episode_steps / max_steps_per_rollout_epoch:
    # 80); algorithm.bootstrap_type "always": truncated and terminated chunks both bootstrap from
    # V(final obs). One 640×480 third-person camera as in the reference. No no-op warm-up (the
    # reference has none for this scene). SAPIEN has no one-renderer-per-process limit: 20 envs per
    # worker. env.train.total_num_envs: 320.
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
    # algorithm.gamma: 0.99, gae_lambda: 0.95, normalize_advantages: True.
    c.advantage.update(bootstrap="always", gamma=0.99, gae_lambda=0.95, normalize=True)
    # The reference's ManiSkill rollouts (rlinf/envs/maniskill/maniskill_env.py): the grasp-and-place
    # reward as per-step changes (_calc_step_reward: 0.1 grasped, 0.1 held 5 steps, 1.0 placed while
    # grasped), and every action of a chunk executed even after the episode ended in it (chunk_step),
    # those steps' rewards counted.
    c.env.update(reward_mode="grasp", finish_chunks=True)
    # Flow-Noise (openpi.noise_method: flow_noise, joint_logprob: True): learned std head, all K
    # steps stochastic, entropy bonus. actor.model.num_action_chunks: 5, action_dim: 7, num_steps: 4
    # (π0 from model/pi0.yaml). algorithm.logprob_type: token_level (π0), chunk_level (π0.5).
    c.policy.update(
        num_action_chunks=5,
        action_env_dim=7,
        num_steps=4,
        noise_method="noise",
        joint_logprob=True,
        logprob_type="chunk_level" if pi05 else "token_level",
    )
    # π0: openpi.detach_critic_input: True; π0.5 leaves it null (its critic reads the frozen VLM).
    c.policy.detach_critic_input = not pi05

    # 320 envs × 1 rollout epoch (env.train.rollout_epoch: 1) × 16 chunk steps = 5120 samples: one
    # minibatch per epoch. runner.max_epochs: 1000, save_interval: 50, val_check_interval: 10.
    c.train.update(iterations=1000, rollout_epochs=1, save_every=50, eval_every=10)
    common.reference_ppo_update(c)
    c.rl.update(
        lr=7.91e-6,  # actor.optim.lr: 7.91e-6
        value_lr=1.55e-4,  # actor.optim.value_lr: 1.55e-4
        update_epochs=5 if pi05 else 4,  # algorithm.update_epoch: 4 (π0), 5 (π0.5)
        minibatch_size=5120,  # actor.global_batch_size: 5120
        micro_batch_size=32,  # actor.micro_batch_size: 32
        entropy_bonus=0.005,  # algorithm.entropy_bonus: 0.005
        grad_clip=1.0,  # actor.optim.clip_grad: 1.0
    )
    # Reference eval: env.eval.total_num_envs 320 episodes on fixed seeds.
    c.eval.update(num_envs=320, num_workers=16, num_trials=320)
    if args.get("shrink"):
        common.shrink(c)
        c.env.task = "PickCube-v1"  # runs offline, unlike the Bridge-asset scene
        c.env.control_mode = "pd_ee_delta_pose"  # Panda's 7-d end-effector deltas, like the WidowX
    return c
