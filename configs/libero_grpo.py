"""GRPO with Flow-SDE on a LIBERO suite, π0 or π0.5, from a few-shot SFT checkpoint.

    python -m pirl.train --config=configs/libero_grpo.py:suite=spatial --workdir=runs/libero_spatial_grpo \\
        --config.model.checkpoint=hf://RLinf/RLinf-Pi0-LIBERO-Spatial-Object-Goal-SFT
    python -m pirl.train --config=configs/libero_grpo.py:suite=10,pi05 --workdir=runs/libero_10_grpo_pi05 \\
        --config.model.checkpoint=hf://RLinf/RLinf-Pi05-LIBERO-SFT
    python -m pirl.train --config=configs/libero_grpo.py:suite=spatial,shrink --workdir=runs/libero_grpo_tiny

Arguments (comma-separated): suite=spatial|object|goal|10|90|130 (default spatial); pi05; shrink
(tiny random model, few envs, 64² renders; needs no checkpoint).

A real run must name its starting weights with ``--config.model.checkpoint``: the reference's
table starts from hf://RLinf/RLinf-Pi0-LIBERO-Spatial-Object-Goal-SFT (π0, spatial/object/goal),
hf://RLinf/RLinf-Pi0-LIBERO-Long-SFT (π0, suite=10) and hf://RLinf/RLinf-Pi05-LIBERO-SFT (π0.5);
see configs/libero_ppo.py, whose model, env, batches and eval this recipe shares. GRPO drops the
critic: groups of 8 consecutive envs start from the same (task, init state), each episode's score
is normalised within its group, and groups that all succeed or all fail (mean outside
[0.1, 0.9]) are dropped.
"""

from __future__ import annotations

import ml_collections

from configs import common, libero_ppo

# Reference files (RLinf examples/embodiment/config/): libero_<suite>_grpo_openpi.yaml (π0) and
# libero_<suite>_grpo_openpi_pi05.yaml (π0.5); what they share with PPO is in libero_ppo.libero_base.

# π0.5 per suite under GRPO: (K, update epochs, SDE noise level) from libero_<suite>_grpo_openpi_pi05
# .yaml actor.model.num_steps, algorithm.update_epoch, actor.model.openpi.noise_level:
#   spatial 3, 1, 0.5 (noise from model/pi0_5.yaml); object 5 (model/pi0_5.yaml), 1, 0.3;
#   goal 5 (model/pi0_5.yaml), 1, 0.3; 10 4, 4, 0.5 (model/pi0_5.yaml).
# 90/130 have no π0.5 recipe: they take libero_10's values.
PI05_GRPO = {
    "spatial": (3, 1, 0.5),
    "object": (5, 1, 0.3),
    "goal": (5, 1, 0.3),
    "10": (4, 4, 0.5),
    "90": (4, 4, 0.5),
    "130": (4, 4, 0.5),
}

ARGS = {"suite": tuple(libero_ppo.SUITES), "pi05": (), "shrink": ()}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, ARGS)
    suite = str(args.get("suite", "spatial"))
    pi05 = bool(args.get("pi05"))
    c = libero_ppo.libero_base(suite, pi05)
    c.rl.algorithm = "grpo"  # algorithm.adv_type: grpo, loss_type: actor
    c.policy.value_source = "none"  # actor.model.add_value_head: False
    c.env.group_size = 8  # algorithm.group_size: 8 (64 envs = 8 groups of 8)
    c.advantage.filter_groups = True  # algorithm.filter_rewards: True
    # algorithm.rewards_lower_bound: 0.1, rewards_upper_bound: 0.9
    c.advantage.update(filter_low=0.1, filter_high=0.9)
    c.rl.update_epochs = 2  # π0, every suite: algorithm.update_epoch: 2
    if pi05:
        k, epochs, noise = PI05_GRPO[suite]
        c.policy.update(num_steps=k, noise_level=noise)
        c.rl.update_epochs = epochs
    if args.get("shrink"):
        common.shrink(c)
    return c
