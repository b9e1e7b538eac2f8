"""PPO on MetaWorld MT50 or ML45 (train tasks), Flow-SDE or Flow-Noise, π0 or π0.5.

    python -m pirl.train --config=configs/metaworld_ppo.py:benchmark=mt50 --workdir=runs/mt50_ppo \\
        --config.model.checkpoint=hf://RLinf/RLinf-Pi0-MetaWorld-SFT
    python -m pirl.train --config=configs/metaworld_ppo.py:benchmark=mt50,noise=flow_noise \\
        --workdir=runs/mt50_ppo_noise --config.model.checkpoint=hf://RLinf/RLinf-Pi0-MetaWorld-SFT
    python -m pirl.train --config=configs/metaworld_ppo.py:benchmark=ml45,pi05 --workdir=runs/ml45_ppo_pi05 \\
        --config.model.checkpoint=hf://RLinf/RLinf-Pi05-MetaWorld-SFT
    python -m pirl.train --config=configs/metaworld_ppo.py:benchmark=mt50,shrink --workdir=runs/mt50_tiny

ML45's held-out evaluation (the reference: the 5 test tasks, 100 episodes, 160 steps):

    python -m pirl.eval --config=configs/metaworld_ppo.py:benchmark=ml45 --workdir=runs/ml45_ppo \\
        --config.env.task=ML45-test --config.eval.num_trials=20 --config.eval.max_steps=160

Arguments (comma-separated): benchmark=mt50|ml45 (default mt50); noise=sde|flow_noise (default
sde); pi05; shrink (tiny random model, few envs, 64² renders; needs no checkpoint).

A real run must name its starting weights with ``--config.model.checkpoint``. The reference's table
starts from its few-shot SFT checkpoints hf://RLinf/RLinf-Pi0-MetaWorld-SFT (π0) and
hf://RLinf/RLinf-Pi05-MetaWorld-SFT (π0.5); its RL results are published as …-RL-FlowSDE /
…-RL-FlowNoise (with their critic). Only the action expert, projections and heads train, as in the
reference; see configs/libero_ppo.py for full fine-tuning with FSDP.

Values are the reference's: each number names its RLinf file (under examples/embodiment/config/)
and key; ``tests/test_config_reference.py`` checks them. ML45 π0.5 has no reference file: it takes the MT50
π0.5 values.
"""

from __future__ import annotations

import ml_collections

from configs import common

BENCHMARKS = {"mt50": "MT50", "ml45": "ML45-train"}
ARGS = {"benchmark": tuple(BENCHMARKS), "noise": ("sde", "flow_noise"), "pi05": (), "shrink": ()}

# Reference files (RLinf examples/embodiment/config/): metaworld_50_ppo_openpi.yaml (MT50 π0),
# metaworld_50_ppo_openpi_pi05.yaml (MT50 π0.5), metaworld_45_ppo_openpi.yaml (ML45 π0); their
# defaults model/pi0.yaml, model/pi0_5.yaml, env/metaworld_50.yaml, env/metaworld_45_ind.yaml.


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, ARGS)
    benchmark = str(args.get("benchmark", "mt50"))
    pi05 = bool(args.get("pi05"))
    c = common.defaults()
    common.set_model(c, pi05)
    # The reference's MetaWorld models have a 5-step horizon, all of it executed (RLinf
    # openpi/dataconfig: pi0_metaworld / pi05_metaworld action_horizon=5).
    c.model.action_horizon = 5
    # OpenPi0ForRLActionPrediction.__init__ (RLinf openpi_action_model.py): only pi05_libero,
    # pi05_maniskill and pi05_droid_polaris get (1024, 512, 256); pi0_metaworld and pi05_metaworld
    # get (512, 256, 128).
    c.policy.value_hidden = (512, 256, 128)

    # One env per worker process. env.train.total_num_envs: 64; 480² renders (env/metaworld_*.yaml
    # init_params.camera_heights/widths: 480) of the reference's camera, with shadows, resized by
    # the model; env.train.max_episode_steps: 100. 50 goal variations per task feed training
    # resets. 16 no-op steps after a reset: the reference's 15 plus the one whose observation it
    # reads (rlinf/envs/metaworld/metaworld_env.py MetaWorldEnv.reset).
    c.env.update(
        sim="metaworld",
        task=BENCHMARKS[benchmark],
        num_envs=64,
        num_workers=64,
        num_stages=2,
        max_steps=100,
        num_trials=50,
        image_size=(480, 480),
        warmup_steps=16,
    )
    # actor.model.num_action_chunks: 5, action_dim: 4, num_steps: 5; model/pi0*.yaml
    # openpi.noise_method: flow_sde, noise_level: 0.5.
    c.policy.update(num_action_chunks=5, action_env_dim=4, num_steps=5, noise_method="sde", noise_level=0.5)
    # π0: openpi.detach_critic_input: True; π0.5 leaves it null (its critic reads the frozen VLM).
    c.policy.detach_critic_input = not pi05

    # 64 envs × 8 rollout epochs × 20 chunk steps = 10240 samples, 5 minibatches of 2048.
    # runner.max_epochs: 1000 (ML45: 500), env.train.rollout_epoch: 8, runner.save_interval: 50
    # (ML45: -1, no periodic save; pirl keeps saving every 50 so a run can resume).
    c.train.update(iterations=500 if benchmark == "ml45" else 1000, rollout_epochs=8, save_every=50)
    common.reference_ppo_update(c)
    c.rl.update(
        lr=5e-6 if pi05 else 1e-5,  # actor.optim.lr: 1.0e-5 (π0), 5.0e-6 (π0.5)
        value_lr=1e-4,  # actor.optim.value_lr: 1.0e-4
        update_epochs=4,  # algorithm.update_epoch: 4
        minibatch_size=2048,  # actor.global_batch_size: 2048
        micro_batch_size=128,  # actor.micro_batch_size: 128
        grad_clip=1.0,  # actor.optim.clip_grad: 1.0
    )
    if pi05:
        # metaworld_50_ppo_openpi_pi05.yaml actor.optim: lr_scheduler "cosine", no min_lr (0.0 in
        # RLinf's FSDP manager), total_training_steps ${runner.max_epochs}, lr_warmup_steps -1 → 0,
        # num_cycles 0.5: a half cosine to 0 over the run's iterations, value lr too.
        c.rl.update(lr_schedule="cosine", min_lr_ratio=0.0)
        c.rl.lr_decay_steps = c.train.get_ref("iterations") * 1
    # algorithm.gamma: 0.99, gae_lambda: 0.95, normalize_advantages: True.
    c.advantage.update(gamma=0.99, gae_lambda=0.95, normalize=True)
    if args.get("noise") == "flow_noise":
        # The reference publishes MetaWorld Flow-Noise results but no recipe file; these are its
        # ManiSkill Flow-Noise settings (maniskill_ppo_openpi.yaml: openpi.noise_method flow_noise,
        # joint_logprob True, algorithm.logprob_type token_level, entropy_bonus 0.005).
        c.policy.update(noise_method="noise", joint_logprob=True, logprob_type="token_level")
        c.rl.entropy_bonus = 0.005

    # Reference eval: MT50 env.eval.total_num_envs 500 = 50 tasks × 10 trials. ML45 evaluates its
    # 5 held-out tasks (env/metaworld_45_ood.yaml, env.eval.total_num_envs 100, max_episode_steps
    # 160) every 10 iterations (runner.val_check_interval: 10); here ML45 evaluates the 45 training
    # tasks × 10, and the held-out evaluation is the command in the docstring. 50 envs, one per
    # worker.
    c.eval.update(num_envs=50, num_workers=50, num_trials=10)
    if args.get("shrink"):
        common.shrink(c)
    return c
