"""Every recipe config builds into an Experiment, full-size and shrunk, with the reference's values.

Expected numbers come from the "Reference configurations" table and the suite-variant notes under
it in the RL notes (shared/reference/rl.md), which summarise the RLinf recipe files.
"""

from __future__ import annotations

import importlib

import pytest

from pirl import cli, envsetup, experiment

SUITES = ("spatial", "object", "goal", "10", "90", "130")


def _combos():
    out = []
    for suite in SUITES:
        for extra in ("", ",pi05", ",quickstart"):
            out.append(("libero_ppo", f"suite={suite}{extra}"))
        for extra in ("", ",pi05"):
            out.append(("libero_grpo", f"suite={suite}{extra}"))
    for bench in ("mt50", "ml45"):
        for noise in ("sde", "flow_noise"):
            for extra in ("", ",pi05"):
                out.append(("metaworld_ppo", f"benchmark={bench},noise={noise}{extra}"))
    out += [("maniskill_ppo", ""), ("maniskill_ppo", "pi05")]
    return out


COMBOS = _combos()


def build(name: str, arg: str) -> experiment.Experiment:
    module = importlib.import_module(f"configs.{name}")
    exp, _ = cli.to_experiment(module.get_config(arg))
    return exp


def with_shrink(arg: str) -> str:
    return f"{arg},shrink" if arg else "shrink"


@pytest.mark.parametrize("name,arg", COMBOS)
def test_builds_full_and_shrunk(name, arg):
    full = build(name, arg)
    small = build(name, with_shrink(arg))
    for exp in (full, small):
        # The sims' own configs validate ranges (init states per task, step limits).
        envsetup.sim_factory(exp.env)
        envsetup.sim_factory(exp.env, num_trials=exp.eval.num_trials, max_steps=exp.eval.max_steps or None)
        assert experiment.rollout_samples(exp) % exp.rl.minibatch_size == 0
        assert exp.env.num_envs % exp.env.num_workers == 0
    # The recipe itself survives shrinking: algorithm, noise, chunk, K, critic.
    for section, field in [
        ("rl", "algorithm"),
        ("policy", "noise_method"),
        ("policy", "num_action_chunks"),
        ("policy", "num_steps"),
        ("policy", "value_source"),
        ("policy", "logprob_type"),
        ("env", "sim"),
        ("env", "group_size"),
    ]:
        assert getattr(getattr(small, section), field) == getattr(getattr(full, section), field), (section, field)
    # Laptop scale: tiny random model, few envs, small renders, one rollout epoch, no download.
    assert small.model.paligemma_variant == "tiny" and small.model.checkpoint == ""
    assert small.model.tokenizer == "embedded"
    assert small.env.num_envs <= 16 and small.env.image_size == (64, 64) and small.train.rollout_epochs == 1
    # Full size: the real model, which needs a checkpoint from the command line.
    assert full.model.paligemma_variant == "gemma_2b" and full.model.tokenizer == "paligemma"
    assert full.model.pi05 == ("pi05" in arg)
    # runner.max_epochs: 1000 in every reference file but metaworld_45_ppo_openpi.yaml (500).
    assert full.train.iterations == (500 if "ml45" in arg else 1000) and full.rl.clip_eps == 0.2
    assert (full.advantage.gamma, full.advantage.gae_lambda) == (0.99, 0.95)


def _values(exp: experiment.Experiment) -> dict:
    return dict(
        chunk=exp.policy.num_action_chunks,
        K=exp.policy.num_steps,
        action_dim=exp.policy.action_env_dim,
        max_steps=exp.env.max_steps,
        envs=exp.env.num_envs,
        rollout_epochs=exp.train.rollout_epochs,
        batch=(exp.rl.minibatch_size, exp.rl.micro_batch_size),
        lr=(exp.rl.lr, exp.rl.value_lr),
        update_epochs=exp.rl.update_epochs,
        noise=(exp.policy.noise_method, exp.policy.noise_level),
        entropy=exp.rl.entropy_bonus,
    )


# (file, arg, expected values); one row of the reference table each unless noted.
REFERENCE = [
    # "LIBERO spatial PPO π0 | 5 | 4 | 7 | 240 | 64 × 8 | 2048 / 128 | 5e-6 / 1e-4 | 4 | SDE 0.5 | 0"
    (
        "libero_ppo",
        "suite=spatial",
        dict(chunk=5, K=4, action_dim=7, max_steps=240, envs=64, rollout_epochs=8, batch=(2048, 128),
             lr=(5e-6, 1e-4), update_epochs=4, noise=("sde", 0.5), entropy=0.0),
    ),
    # "LIBERO spatial PPO quickstart | 5 | 4 | 7 | 240 | 32 × 2 | 256 / 64 | 1e-6 / 1e-4 | 4 | SDE 0.5 | 0"
    (
        "libero_ppo",
        "suite=spatial,quickstart",
        dict(chunk=5, K=4, action_dim=7, max_steps=240, envs=32, rollout_epochs=2, batch=(256, 64),
             lr=(1e-6, 1e-4), update_epochs=4, noise=("sde", 0.5), entropy=0.0),
    ),
    # "ManiSkill PPO π0 | 5 | 4 | 7 | 80 | 320 × 1, auto-reset | 5120 / 32 | 7.91e-6 / 1.55e-4 | 4 |
    #  Flow-Noise, joint, token-level | 0.005"
    (
        "maniskill_ppo",
        "",
        dict(chunk=5, K=4, action_dim=7, max_steps=80, envs=320, rollout_epochs=1, batch=(5120, 32),
             lr=(7.91e-6, 1.55e-4), update_epochs=4, noise=("noise", 0.5), entropy=0.005),
    ),
    # "MetaWorld MT50 PPO π0 | 5 | 5 | 4 | 100 | 64 × 8 | 2048 / 128 | 1e-5 / 1e-4 | 4 | SDE 0.5 | 0"
    (
        "metaworld_ppo",
        "benchmark=mt50",
        dict(chunk=5, K=5, action_dim=4, max_steps=100, envs=64, rollout_epochs=8, batch=(2048, 128),
             lr=(1e-5, 1e-4), update_epochs=4, noise=("sde", 0.5), entropy=0.0),
    ),
    # "LIBERO spatial GRPO π0 | 5 | 4 | 7 | 240 | 64 × 8, G = 8 | 2048 / 128 | 5e-6 | 2 | SDE 0.5 | 0"
    # (value lr unused without a critic; the default stays)
    (
        "libero_grpo",
        "suite=spatial",
        dict(chunk=5, K=4, action_dim=7, max_steps=240, envs=64, rollout_epochs=8, batch=(2048, 128),
             lr=(5e-6, 1e-4), update_epochs=2, noise=("sde", 0.5), entropy=0.0),
    ),
]  # fmt: skip


@pytest.mark.parametrize("name,arg,expected", REFERENCE)
def test_reference_rows(name, arg, expected):
    assert _values(build(name, arg)) == expected


def test_reference_variants():
    # "LIBERO goal 320 steps; libero_10 480 steps and 10-action chunks"
    assert build("libero_ppo", "suite=goal").env.max_steps == 320
    ten = build("libero_ppo", "suite=10")
    assert (ten.env.max_steps, ten.policy.num_action_chunks) == (480, 10)
    # "π0 LIBERO keeps model horizon 50 but executes and scores only the first 5 (or 10)"
    for suite in SUITES:
        exp = build("libero_ppo", f"suite={suite}")
        assert exp.model.action_horizon == 50 and exp.policy.num_action_chunks in (5, 10)
    # "π0.5 spatial K = 3 and 1 update epoch"
    spatial05 = build("libero_ppo", "suite=spatial,pi05")
    assert (spatial05.policy.num_steps, spatial05.rl.update_epochs) == (3, 1)
    # "object/goal noise 0.3" (π0.5), PPO and GRPO alike; spatial keeps 0.5
    for name in ("libero_ppo", "libero_grpo"):
        assert build(name, "suite=object,pi05").policy.noise_level == 0.3
        assert build(name, "suite=goal,pi05").policy.noise_level == 0.3
        assert build(name, "suite=spatial,pi05").policy.noise_level == 0.5
    # "update_epochs 2 (π0), 1–4 (π0.5)" under GRPO
    assert {build("libero_grpo", f"suite={s}").rl.update_epochs for s in SUITES} == {2}
    # π0.5's per-suite values, from the RLinf recipe files libero_<suite>_grpo_openpi_pi05.yaml:
    # update_epoch 1 / 1 / 1 / 4 for spatial / object / goal / 10, num_steps 3 on spatial, 4 on 10.
    got = {s: build("libero_grpo", f"suite={s},pi05") for s in ("spatial", "object", "goal", "10")}
    assert {s: e.rl.update_epochs for s, e in got.items()} == {"spatial": 1, "object": 1, "goal": 1, "10": 4}
    assert (got["spatial"].policy.num_steps, got["10"].policy.num_steps) == (3, 4)


def test_grpo_and_flow_noise_switches():
    # GRPO: no critic, G = 8 consecutive envs share an init state, all-same groups filtered.
    grpo = build("libero_grpo", "suite=goal")
    assert grpo.rl.algorithm == "grpo" and grpo.policy.value_source == "none"
    assert grpo.env.group_size == 8 and grpo.advantage.filter_groups
    assert (grpo.advantage.filter_low, grpo.advantage.filter_high) == (0.1, 0.9)
    # Flow-Noise (ManiSkill π0): joint log-prob over all K steps, token-level ratios, bonus 0.005,
    # auto-reset with bootstrapping on every chunk that ends an episode.
    ms = build("maniskill_ppo", "")
    assert ms.policy.joint_logprob and ms.policy.logprob_type == "token_level"
    assert ms.env.auto_reset and ms.advantage.bootstrap == "always"
    noise = build("metaworld_ppo", "benchmark=mt50,noise=flow_noise")
    assert (noise.policy.noise_method, noise.policy.joint_logprob, noise.rl.entropy_bonus) == ("noise", True, 0.005)
    # π0.5's critic reads the VLM prefix (value_after_vlm) under PPO.
    assert build("libero_ppo", "suite=10,pi05").policy.value_source == "vlm"
    assert build("libero_ppo", "suite=10").policy.value_source == "expert"
    # LIBERO / MetaWorld train one episode per env per rollout epoch.
    assert not build("libero_ppo", "suite=spatial").env.auto_reset


def test_eval_sizes():
    # "Eval: LIBERO 500 envs (10 tasks × 50 trials), MetaWorld 500, ManiSkill 320": episodes per
    # eval = tasks × eval.num_trials.
    assert build("libero_ppo", "suite=spatial").eval.num_trials == 50  # × 10 tasks = 500
    assert build("metaworld_ppo", "benchmark=mt50").eval.num_trials == 10  # × 50 tasks = 500
    assert build("maniskill_ppo", "").eval.num_trials == 320  # × 1 task


def test_mistyped_field_names_the_closest():
    from configs import libero_ppo

    c = libero_ppo.get_config("suite=spatial")
    c.rl.cliip_eps = 0.3
    with pytest.raises(cli.ConfigError, match="clip_eps"):
        cli.to_experiment(c)


def test_bad_argument_is_named():
    from configs import libero_grpo, metaworld_ppo

    with pytest.raises(ValueError, match="suite"):
        libero_grpo.get_config("suite=11")
    with pytest.raises(ValueError, match="quickstart"):
        libero_grpo.get_config("suite=spatial,quickstart")  # the quickstart is a PPO recipe
    with pytest.raises(ValueError, match="noise"):
        metaworld_ppo.get_config("noise=cps")


def test_inconsistent_override_is_rejected():
    # A minibatch that does not divide the rollout (64 × 8 × 48 = 24576 samples) is named.
    from configs import libero_ppo

    c = libero_ppo.get_config("suite=spatial")
    c.rl.minibatch_size = 5120
    with pytest.raises(cli.ConfigError, match="minibatch_size"):
        cli.to_experiment(c)


# Every π0.5 recipe and the checkpoint config it starts from, all with discrete_state_input=False:
# openpi src/openpi/training/config.py TrainConfig "pi05_libero"; RLinf
# rlinf/models/embodiment/openpi/dataconfig/__init__.py "pi05_libero", "pi05_maniskill",
# "pi05_metaworld" (the reference's π0.5 SFT checkpoints).
PI05_RECIPES = [(n, a) for n, a in COMBOS if "pi05" in a] + [("sft_metaworld", "pi05")]


@pytest.mark.parametrize("name,arg", PI05_RECIPES)
def test_pi05_recipes_leave_the_state_out_of_the_prompt(name, arg):
    config = importlib.import_module(f"configs.{name}").get_config(arg)
    exp, _ = cli.to_experiment(config, cli.recipe_sections(config))
    assert exp.model.pi05 and not exp.model.pi0_config().discrete_state_input
    assert not envsetup.env_transform(exp, ("main",), 4).discrete_state_input


def test_discrete_state_input_switch():
    # Without the recipes' setting, openpi's Pi0Config default holds: π0.5 bins the state into the
    # prompt (src/openpi/models/pi0_config.py: discrete_state_input None -> pi05); "on" turns it on.
    from configs import libero_ppo

    assert experiment.ModelSpec(pi05=True).pi0_config().discrete_state_input
    assert not build("libero_ppo", "suite=spatial").model.pi0_config().discrete_state_input
    c = libero_ppo.get_config("suite=spatial,pi05")
    c.model.discrete_state_input = "on"
    exp, _ = cli.to_experiment(c)
    assert exp.model.pi0_config().discrete_state_input
    assert envsetup.env_transform(exp, ("main",), 7).discrete_state_input
    c = libero_ppo.get_config("suite=spatial")
    c.model.discrete_state_input = "on"
    with pytest.raises(cli.ConfigError, match="pi05"):
        cli.to_experiment(c)


def test_pi05_libero_prompt_token_ids_are_openpis():
    """openpi's π0.5 LIBERO prompt (pi05_libero: discrete_state_input=False, so TokenizePrompt in
    src/openpi/transforms.py passes no state): PaligemmaTokenizer.tokenize in
    src/openpi/models/tokenizer.py cleans the text (strip, "_" and "\\n" to spaces), then
    encode(cleaned, add_bos=True) + encode("\\n"), right-padded with 0 to max_token_len (200)."""
    import numpy as np
    import sentencepiece

    from pirl.data import norm_stats as ns
    from pirl.data import transforms
    from pirl.models import tokenizer

    exp = build("libero_ppo", "suite=spatial,pi05")
    cfg = envsetup.env_transform(exp, ("agentview", "wrist"), 7)
    proto = tokenizer.embedded_tokenizer_proto()
    # strip() first, then "_" and "\n" become spaces:
    instruction = " pick_up the black bowl\nbetween the plate and the ramp and place it on the plate \n"
    cleaned = "pick up the black bowl between the plate and the ramp and place it on the plate"
    sp = sentencepiece.SentencePieceProcessor(model_proto=proto)
    want = sp.encode(cleaned, add_bos=True) + sp.encode("\n")
    assert want[0] == 2  # BOS
    stats = {
        k: ns.NormStats(mean=np.zeros(d), std=np.ones(d), q01=-np.ones(d), q99=np.ones(d))
        for k, d in (("state", 8), ("actions", 7))
    }
    images = {cam: np.zeros((1, 32, 32, 3), np.uint8) for cam in ("agentview", "wrist")}
    state = np.full((1, 8), 0.3, np.float32)
    batch = transforms.make_model_inputs(
        cfg, images, state, [instruction], stats, tokenizer.PaligemmaTokenizer(model_proto=proto)
    )
    ids, mask = batch["tokenized_prompt"][0], batch["tokenized_prompt_mask"][0]
    assert ids.shape == (200,) and mask.sum() == len(want)
    assert ids[: len(want)].tolist() == want and not ids[len(want) :].any()
    assert "State" not in sp.decode(ids[: len(want)].tolist())


def test_maniskill_env_options_reach_the_sim():
    from configs import maniskill_ppo

    full = envsetup.sim_factory(build("maniskill_ppo", "").env)
    # The reference's ManiSkill rollouts: grasp-and-place reward, chunks run to their end
    # (rlinf/envs/maniskill/maniskill_env.py ManiskillEnv._calc_step_reward, chunk_step).
    assert full.control_mode is None and full.reward_mode == "grasp" and full.backend == "cpu"
    for arg in ("", "pi05", "shrink"):
        exp = build("maniskill_ppo", arg)
        assert envsetup.sim_factory(exp.env).reward_mode == "grasp"
        assert envsetup.pool_config(exp.env).finish_chunks
    assert envsetup.sim_factory(build("maniskill_ppo", "shrink").env).control_mode == "pd_ee_delta_pose"
    c = maniskill_ppo.get_config("")
    c.env.update(backend="gpu", reward_mode="dense", control_mode="pd_joint_delta_pos")
    exp, _ = cli.to_experiment(c)
    sim = envsetup.sim_factory(exp.env)
    assert (sim.backend, sim.reward_mode, sim.control_mode) == ("gpu", "dense", "pd_joint_delta_pos")
    c.env.reward_mode = "shaped"
    with pytest.raises(cli.ConfigError, match="reward_mode"):
        cli.to_experiment(c)
    from configs import libero_ppo, metaworld_ppo

    for field, value in (("backend", "gpu"), ("finish_chunks", True)):
        c = metaworld_ppo.get_config("benchmark=mt50")
        c.env[field] = value
        with pytest.raises(cli.ConfigError, match=f"env.{field} applies to ManiSkill only"):
            cli.to_experiment(c)
    c = libero_ppo.get_config("suite=spatial")
    c.env.fast_render = True
    with pytest.raises(cli.ConfigError, match=r"env\.fast_render applies to MetaWorld only"):
        cli.to_experiment(c)
    c = metaworld_ppo.get_config("benchmark=mt50")
    c.env.reward_mode = "grasp"
    with pytest.raises(cli.ConfigError, match="reward_mode"):
        cli.to_experiment(c)
    c = metaworld_ppo.get_config("benchmark=mt50")
    c.env.reward_mode = "dense"  # MetaWorld has a shaped reward too; LIBERO does not
    assert envsetup.sim_factory(cli.to_experiment(c)[0].env).reward == "dense"
    c = libero_ppo.get_config("suite=spatial")
    c.env.reward_mode = "dense"
    with pytest.raises(cli.ConfigError, match="success reward"):
        cli.to_experiment(c)


# ---------------------------------------------------------------- one training iteration per file


def _one_iteration(name: str, arg: str, workdir) -> dict:
    """One pirl.train iteration of a shrunk recipe, with episodes cut to one chunk step (every
    stage still runs: env pool, rollout, advantages, update, checkpoint)."""
    import jax

    from pirl import train

    c = importlib.import_module(f"configs.{name}").get_config(with_shrink(arg))
    c.env.max_steps = c.policy.num_action_chunks
    c.rl.update(minibatch_size=c.env.num_envs, micro_batch_size=c.env.num_envs)
    c.train.update(iterations=1, tensorboard=False)
    exp, _ = cli.to_experiment(c)
    # One device, as on a laptop: the shrunk batches (4 envs) need not divide the 8 test devices.
    metrics = train.train(exp, workdir, devices=jax.devices()[:1])
    # Every env ran exactly one chunk and the update saw finite numbers.
    assert metrics["env/episodes"] == exp.env.num_envs
    assert metrics["env/steps"] == exp.env.num_envs * exp.policy.num_action_chunks
    assert metrics["train/skipped_updates"] == 0.0
    assert (workdir / "checkpoints").is_dir()
    return metrics


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,arg",
    [
        ("metaworld_ppo", "benchmark=mt50"),
        pytest.param("libero_ppo", "suite=spatial", marks=pytest.mark.libero_assets),
        pytest.param("libero_grpo", "suite=spatial", marks=pytest.mark.libero_assets),
    ],
)
def test_shrunk_recipe_trains_one_iteration(name, arg, tmp_path):
    if name.startswith("libero"):
        pytest.importorskip("libero")
    else:
        pytest.importorskip("metaworld")
    _one_iteration(name, arg, tmp_path)


@pytest.mark.slow
def test_shrunk_maniskill_trains_one_iteration(tmp_path):
    pytest.importorskip("mani_skill")
    _one_iteration("maniskill_ppo", "", tmp_path)
