"""PPO with Flow-SDE on a LIBERO suite, π0 or π0.5, from a few-shot SFT checkpoint.

    python -m pirl.train --config=configs/libero_ppo.py:suite=spatial --workdir=runs/libero_spatial_ppo \\
        --config.model.checkpoint=hf://RLinf/RLinf-Pi0-LIBERO-Spatial-Object-Goal-SFT
    python -m pirl.train --config=configs/libero_ppo.py:suite=goal,pi05 --workdir=runs/libero_goal_ppo_pi05 \\
        --config.model.checkpoint=hf://RLinf/RLinf-Pi05-LIBERO-SFT
    python -m pirl.train --config=configs/libero_ppo.py:suite=spatial,quickstart --workdir=runs/libero_quick \\
        --config.model.checkpoint=hf://RLinf/RLinf-Pi0-LIBERO-Spatial-Object-Goal-SFT
    python -m pirl.train --config=configs/libero_ppo.py:suite=spatial,shrink --workdir=runs/libero_tiny

Arguments (comma-separated): suite=spatial|object|goal|10|90|130 (default spatial); pi05 (π0.5
instead of π0); quickstart (the reference's memory-friendly variant: 32 envs × 2 rollout epochs,
256 / 64 batches, lr 1e-6); shrink (tiny random model, few envs, 64² renders: runs on a laptop,
needs no checkpoint).

A real run must name its starting weights with ``--config.model.checkpoint``. The reference's table
starts RL from these few-shot SFT checkpoints (safetensors with the norm stats under
physical-intelligence/libero/; any layout pirl.checkpoints.load recognises works the same):
  π0, suite=spatial|object|goal  hf://RLinf/RLinf-Pi0-LIBERO-Spatial-Object-Goal-SFT
  π0, suite=10                   hf://RLinf/RLinf-Pi0-LIBERO-Long-SFT
  π0.5, every suite              hf://RLinf/RLinf-Pi05-LIBERO-SFT
openpi's own LIBERO checkpoints (gs://openpi-assets/checkpoints/pi0_libero, pi05_libero) load too.
Without one the model would be randomly initialised.

Values are the reference's (RLinf LIBERO recipes; the table in the RL notes). Like the reference,
only the action expert, projections and heads train (``rl.trainable="expert_only"``: SigLIP and
Gemma-2B frozen), so plain data parallelism fits a full-size model on one 80 GB accelerator. For
full fine-tuning add ``--config.rl.trainable=full --config.mesh.data=1 --config.mesh.fsdp=-1``:
3.3B params with fp32 AdamW state and gradients (≈16 bytes each, ≈53 GB) do not fit beside
activations unless sharded.
"""

from __future__ import annotations

import ml_collections

from configs import common

# suite argument → (LIBERO suite, max env steps, π0's executed chunk).
#   spatial/object 240, goal 320, 10 480 with 10-action chunks: the reference's recipes (object
#   uses 240 there, below the adapter's own 280 default).
#   90: no reference RL recipe; 400 is LIBERO's own limit for libero_90 (openpi's eval too).
#   130: the union holds libero_10's long tasks, so it takes libero_10's 480; shorter tasks end on
#   success well before. One limit per run keeps the rollout buffer a fixed size.
#   90/130 execute 5 actions: most of their tasks are short, like spatial/object/goal.
SUITES = {
    "spatial": ("libero_spatial", 240, 5),
    "object": ("libero_object", 240, 5),
    "goal": ("libero_goal", 320, 5),
    "10": ("libero_10", 480, 10),
    "90": ("libero_90", 400, 5),
    "130": ("libero_130", 480, 5),
}

# π0.5 per suite under PPO: (K, update epochs, SDE noise level). Reference: spatial K 3 and 1
# epoch; object 1 epoch and noise 0.3; goal noise 0.3; the rest of π0.5's defaults are K 5,
# 4 epochs, noise 0.5. 90/130 have no π0.5 recipe: they take libero_10's values.
PI05_PPO = {
    "spatial": (3, 1, 0.5),
    "object": (5, 1, 0.3),
    "goal": (5, 4, 0.3),
    "10": (5, 4, 0.5),
    "90": (5, 4, 0.5),
    "130": (5, 4, 0.5),
}

ARGS = {"suite": tuple(SUITES), "pi05": (), "quickstart": (), "shrink": ()}


def libero_base(suite: str, pi05: bool) -> ml_collections.ConfigDict:
    """What PPO and GRPO share on LIBERO: model, env, chunk, batches, optimizer, eval."""
    task, max_steps, chunk = SUITES[suite]
    c = common.defaults()
    common.set_model(c, pi05)
    # π0 keeps openpi's 50-step horizon and scores only the executed chunk; π0.5's LIBERO model
    # (pi05_libero) was trained with a 10-step horizon.
    c.model.action_horizon = 10 if pi05 else 50

    # 64 envs, one per worker process: MuJoCo under EGL draws with one renderer per process.
    # Two stages overlap inference for one half of the envs with stepping of the other.
    c.env.update(
        sim="libero",
        task=task,
        num_envs=64,
        num_workers=64,
        num_stages=2,
        max_steps=max_steps,
        num_trials=50,  # LIBERO ships 50 init states per task
        image_size=(256, 256),  # the reference renders 256², the model resizes with padding
        warmup_steps=15,
    )
    c.policy.update(num_action_chunks=chunk, action_env_dim=7, num_steps=4, noise_method="sde", noise_level=0.5)
    # The reference leaves detach_critic_input unset for π0.5 (its critic reads the frozen VLM).
    c.policy.detach_critic_input = not pi05

    # 64 envs × 8 rollout epochs × ⌈max_steps / chunk⌉ chunk steps: 24576 (spatial, object, 10),
    # 32768 (goal), 40960 (90), 49152 (130); 2048 divides each.
    c.train.update(iterations=1000, rollout_epochs=8, save_every=40)
    c.rl.update(
        lr=5e-6,
        value_lr=1e-4,
        trainable="expert_only",
        update_epochs=4,
        minibatch_size=2048,
        micro_batch_size=128,
        clip_eps=0.2,
    )
    c.advantage.update(gamma=0.99, gae_lambda=0.95)

    # Reference eval: every task × 50 init states (500 episodes on a 10-task suite). Which envs
    # run them does not change the result; 50 (one per worker, as above) divides every suite's
    # episode count.
    c.eval.update(num_envs=50, num_workers=50, num_trials=50)
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, ARGS)
    suite = str(args.get("suite", "spatial"))
    pi05 = bool(args.get("pi05"))
    c = libero_base(suite, pi05)
    if pi05:
        k, epochs, noise = PI05_PPO[suite]
        c.policy.update(num_steps=k, noise_level=noise)
        c.rl.update_epochs = epochs
    if args.get("quickstart"):
        # The reference's quickstart fits one smaller GPU: fewer envs, smaller batches, lower lr.
        c.env.update(num_envs=32, num_workers=32)
        c.train.rollout_epochs = 2
        c.rl.update(minibatch_size=256, micro_batch_size=64, lr=1e-6)
    if args.get("shrink"):
        common.shrink(c)
    return c
