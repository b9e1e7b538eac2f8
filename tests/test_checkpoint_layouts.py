"""model.checkpoint in every layout pirl recognises, and pirl.export back out.

Each layout is written here at tiny size: openpi orbax (float32 and bfloat16) with the project's
writer, the reference's safetensors directory (norm stats at physical-intelligence/libero/, its
critic as `value_head.mlp.*`), a sharded safetensors checkpoint with an index, and a LeRobot
directory, the PyTorch names coming from this test suite's independent mapping
(test_checkpoints_torch.independent_torch_state_dict). From each, one pirl.train iteration and one
pirl.eval run (toy simulator); the loaded params, norm stats and critic are checked against what
was written. A trained run is then exported in each format and loaded back.
"""

import json
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import safetensors.numpy
from flax import traverse_util

from configs import common, metaworld_ppo
from pirl import checkpoints, cli, envsetup, runsetup, train
from pirl import eval as eval_lib
from pirl import export as export_cli
from pirl.data import norm_stats as ns
from pirl.models import pi0
from pirl.rl import update as upd
from tests.test_checkpoints_torch import independent_torch_state_dict

# Every run here compiles the same programs: a persistent cache shared by the module.
pytestmark = pytest.mark.usefixtures("module_compile_cache")

ASSET = "physical-intelligence/libero"
HIDDEN = (32, 32)  # the shrunk recipes' critic


def _config(checkpoint: str = "", **model):
    c = common.defaults()
    c.env.update(sim="toy", task="")
    c.policy.update(num_action_chunks=4, action_env_dim=2, num_steps=2)
    c = common.shrink(c)
    c.env.update(num_envs=4, num_workers=2, max_steps=8, image_size=(28, 28), num_trials=2)
    samples = 4 * math.ceil(8 / 4)
    c.rl.update(minibatch_size=samples, micro_batch_size=samples, update_epochs=1)
    c.train.update(iterations=1, tensorboard=False)
    c.eval.update(num_envs=2, num_workers=2, num_trials=1, max_steps=8)
    c.model.update(checkpoint=checkpoint, **model)
    return c


def _exp(checkpoint: str = "", **model):
    return cli.to_experiment(_config(checkpoint, **model))[0]


@pytest.fixture(scope="module")
def written():
    """Tiny π0 params with distinct values, its norm stats and an RLinf-layout critic."""
    exp = _exp()
    config = exp.model.pi0_config()
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), pi0.param_shapes(config))
    stats = {"state": ns.compute(rng.normal(size=(50, 2))), "actions": ns.compute(rng.normal(size=(50, 2)))}
    width = config.action_expert.width
    critic = {  # rlinf ValueHead: Linear(width, 32), ReLU, Linear(32, 32), ReLU, Linear(32, 1)
        "value_head.mlp.0.weight": rng.normal(size=(HIDDEN[0], width)).astype(np.float32),
        "value_head.mlp.0.bias": rng.normal(size=(HIDDEN[0],)).astype(np.float32),
        "value_head.mlp.2.weight": rng.normal(size=(HIDDEN[1], HIDDEN[0])).astype(np.float32),
        "value_head.mlp.2.bias": rng.normal(size=(HIDDEN[1],)).astype(np.float32),
        "value_head.mlp.4.weight": rng.normal(size=(1, HIDDEN[1])).astype(np.float32),
        "value_head.mlp.4.bias": rng.normal(size=(1,)).astype(np.float32),
    }
    return config, params, stats, critic


def _critic_tree(critic):
    """The critic in pirl's layout, by hand: dense_i = mlp.{2i}, out = the last; kernel = weight.T."""
    return {
        "dense_0": {"kernel": critic["value_head.mlp.0.weight"].T, "bias": critic["value_head.mlp.0.bias"]},
        "dense_1": {"kernel": critic["value_head.mlp.2.weight"].T, "bias": critic["value_head.mlp.2.bias"]},
        "out": {"kernel": critic["value_head.mlp.4.weight"].T, "bias": critic["value_head.mlp.4.bias"]},
    }


def _write(layout: str, root, written):
    config, params, stats, critic = written
    path = root / layout
    if layout in ("openpi_fp32", "openpi_bf16"):
        dtype = jnp.bfloat16 if layout == "openpi_bf16" else np.float32
        checkpoints.save_openpi(path, jax.tree.map(lambda x: x.astype(dtype), params), norm_stats=stats, asset_id=ASSET)
        return path
    sd = independent_torch_state_dict(params, config.pi05)
    path.mkdir()
    if layout == "reference":
        safetensors.numpy.save_file({**sd, **critic}, path / "model.safetensors")
        ns.save(path / ASSET, stats)
    elif layout == "sharded":
        keys = sorted(sd)
        parts = [keys[i::3] for i in range(3)]
        weight_map = {}
        for n, part in enumerate(parts, 1):
            name = f"model-{n:05d}-of-00003.safetensors"
            safetensors.numpy.save_file({k: sd[k] for k in part}, path / name)
            weight_map |= dict.fromkeys(part, name)
        (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        ns.save(path / "assets" / ASSET, stats)
    elif layout == "lerobot":
        safetensors.numpy.save_file({"model." + k: v for k, v in sd.items()}, path / "model.safetensors")
        checkpoints.lerobot.write(
            path,
            pi05=False,
            paligemma_variant="tiny",
            action_expert_variant="tiny",
            action_horizon=config.action_horizon,
            n_action_steps=4,
            num_inference_steps=2,
            max_token_len=config.max_token_len,
            model_action_dim=config.action_dim,
            image_size=config.image_size,
            cameras=["main"],
            stats=stats,
            env_action_dim=2,
            norm="zscore",
            discrete_state_input=False,
            dtype="float32",
        )
    return path


def _assert_tree_equal(got, want):
    flat_got = traverse_util.flatten_dict(got, sep="/")
    flat_want = traverse_util.flatten_dict(want, sep="/")
    assert sorted(flat_got) == sorted(flat_want)
    for key, value in flat_want.items():
        assert np.asarray(flat_got[key]).dtype == np.float32, key
        np.testing.assert_array_equal(np.asarray(flat_got[key]), np.asarray(value), err_msg=key)


def _assert_stats_equal(got, want):
    assert sorted(got) == sorted(want)
    for key in want:
        for field in ("mean", "std", "q01", "q99"):
            np.testing.assert_array_equal(getattr(got[key], field), getattr(want[key], field), err_msg=f"{key}.{field}")


LAYOUTS = ("openpi_fp32", "openpi_bf16", "reference", "sharded", "lerobot")


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_train_and_eval_from_each_layout(layout, written, tmp_path, caplog):
    _, params, stats, critic = written
    path = _write(layout, tmp_path, written)
    exp = _exp(str(path))
    with caplog.at_level(logging.INFO):
        setup = runsetup.build(exp)
    want = (
        params if layout != "openpi_bf16" else jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(np.float32), params)
    )
    _assert_tree_equal(setup.params["model"], want)
    _assert_stats_equal(setup.norm_stats, stats)
    assert setup.exp.model.asset_id == ("lerobot" if layout == "lerobot" else ASSET)
    if layout == "reference":  # the critic fits the configured one: loaded, and said so once
        _assert_tree_equal(setup.params["value_head"], _critic_tree(critic))
        assert sum("loaded value_head" in r.getMessage() for r in caplog.records) == 1
    else:
        assert not any("value_head" in r.getMessage() for r in caplog.records)

    workdir = tmp_path / "run"
    train.train(exp, workdir)
    record = json.loads((workdir / "run.json").read_text())
    assert record["start"]["checkpoint"] == str(path) and record["start"]["asset_id"] == setup.exp.model.asset_id
    # Evaluated from the run directory alone: the run's norm stats, not the identity.
    res = eval_lib.evaluate(_exp(), str(workdir))
    assert res["episodes"] == 3 * 1  # toy: 3 tasks × 1 trial
    run = checkpoints.load(workdir, pi0.Pi0Config())
    _assert_stats_equal(run.norm_stats, stats)
    assert run.layout == "run" and run.step == 1


def test_critic_that_does_not_fit_is_reported_and_skipped(written, tmp_path, caplog):
    path = _write("reference", tmp_path, written)
    c = _config(str(path))
    c.policy.value_hidden = (16, 32)  # the file's first layer is 32 wide
    exp, _ = cli.to_experiment(c)
    with caplog.at_level(logging.INFO):
        setup = runsetup.build(exp)
    fresh = runsetup.init_heads(exp, setup.model, jax.random.key(exp.train.seed))
    _assert_tree_equal(setup.params["value_head"], jax.device_get(fresh["value_head"]))  # not half-loaded
    msg = [r.getMessage() for r in caplog.records if "value_head" in r.getMessage()]
    assert (
        len(msg) == 1
        and "does not fit" in msg[0]
        and "dense_0/bias has shape (32,), the configured head (16,)" in msg[0]
    )


def test_bfloat16_checkpoint_trains_float32_masters(written, tmp_path):
    """The smallest failing input of a bf16 file: shrunk MetaWorld PPO from a tiny π0 saved in
    bfloat16. AdamW's first step with gradient g moves a weight by lr·g/(|g| + eps) plus the decay
    lr·wd·w: 0.5 − 5e-6·(1 − 1e-8) − 5e-6·0.01·0.5 = 0.499994975 (float32: 0.49999499); in
    bfloat16 the step rounds back to 0.5."""
    c = metaworld_ppo.get_config("shrink")
    exp0, _ = cli.to_experiment(c)
    shapes = pi0.param_shapes(exp0.model.pi0_config())
    half = jax.tree.map(lambda s: np.full(s.shape, 0.5, jnp.bfloat16), shapes)
    checkpoints.save_openpi(tmp_path / "bf16", half, norm_stats=written[2], asset_id="a")
    c.model.checkpoint = str(tmp_path / "bf16")
    c.rl.lr = 5e-6
    exp, _ = cli.to_experiment(c)
    setup = runsetup.build(exp)
    state = upd.init_train_state(exp.rl, setup.params)
    labels = upd.param_labels(exp.rl.trainable, state.params)
    train_params, _ = upd.split_params(state.params, labels)
    train_labels, _ = upd.split_params(labels, labels)
    for leaf in jax.tree.leaves(train_params) + jax.tree.leaves(state.opt_state):
        assert not jnp.issubdtype(leaf.dtype, jnp.floating) or leaf.dtype == jnp.float32, leaf.dtype
    # One step with gradient 1 on one expert weight (global norm 1: the clip leaves it).
    grads = jax.tree.map(jnp.zeros_like, train_params)
    path = ("model", "action_out_proj", "bias")
    flat = traverse_util.flatten_dict(grads)
    flat[path] = flat[path].at[0].set(1.0)
    grads = traverse_util.unflatten_dict(flat)
    tx = upd.make_optimizer(exp.rl, train_labels)
    updates, _ = tx.update(grads, state.opt_state, train_params)
    new = optax.apply_updates(train_params, updates)
    lr, wd = exp.rl.lr, exp.rl.weight_decay
    assert lr == 5e-6 and wd == 0.01
    want = np.float32(0.5 - lr * (1 / (1 + exp.rl.eps)) - lr * wd * 0.5)
    got = traverse_util.flatten_dict(new)[path][0]
    assert got.dtype == jnp.float32 and got == pytest.approx(want, abs=1e-8) and got != 0.5


def test_errors_name_the_file_and_the_missing_piece(written, tmp_path):
    hint = pi0.Pi0Config.tiny()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.md").write_text("x")
    with pytest.raises(checkpoints.CheckpointError, match=r"empty: no params/ .*model\.safetensors.*\['README\.md'\]"):
        checkpoints.load(tmp_path / "empty", hint)
    path = _write("reference", tmp_path, written)
    ns.save(path / "other/robot", written[2])
    with pytest.raises(checkpoints.CheckpointError) as info:
        checkpoints.load(path, hint)
    assert "['other/robot', 'physical-intelligence/libero']" in str(info.value) and str(path) in str(info.value)
    with pytest.raises(checkpoints.CheckpointError, match=r"asset id 'droid'.*\['other/robot', 'physical-intel"):
        checkpoints.load(path, hint, asset_id="droid")
    tensors = safetensors.numpy.load_file(path / "model.safetensors")
    key = "action_out_proj.weight"
    tensors[key] = tensors[key][:, :16]
    safetensors.numpy.save_file(tensors, path / "model.safetensors")
    with pytest.raises(
        checkpoints.CheckpointError,
        match=r"reference: action_out_proj/kernel: expected \[32, 32\] per slice, found action_out_proj\.weight \[32,",
    ):
        checkpoints.load(path, hint, asset_id=ASSET)
    assert "\n" not in str(info.value)


def test_recorded_convention_wins_over_the_config(written, tmp_path):
    """A LeRobot π0.5 directory records its horizon, prompt length and (in its preprocessor) the
    discrete state input; these replace the recipe's values."""
    stats = written[2]
    c5 = pi0.Pi0Config.tiny(pi05=True, max_token_len=32)
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), pi0.param_shapes(c5))
    path = tmp_path / "lerobot05"
    path.mkdir()
    sd = independent_torch_state_dict(params, True)
    safetensors.numpy.save_file({"model." + k: v for k, v in sd.items()}, path / "model.safetensors")
    checkpoints.lerobot.write(
        path,
        pi05=True,
        paligemma_variant="tiny",
        action_expert_variant="tiny",
        action_horizon=10,
        n_action_steps=4,
        num_inference_steps=2,
        max_token_len=24,
        model_action_dim=32,
        image_size=28,
        cameras=["main"],
        stats=stats,
        env_action_dim=2,
        norm="quantile",
        discrete_state_input=False,
        dtype="float32",
    )
    exp = _exp(str(path), pi05=True, discrete_state_input="on", action_horizon=8)
    setup = runsetup.build(exp)
    assert setup.model.pi05 and setup.model.action_horizon == 10 and setup.model.max_token_len == 24
    assert setup.model.discrete_state_input is False and setup.exp.model.discrete_state_input == "off"
    _assert_tree_equal(setup.params["model"], params)
    actor = runsetup.make_actor(setup, envsetup.sim_factory(setup.exp.env).spec())
    assert actor.transform.norm == "quantile" and actor.transform.discrete_state_input is False


# ---------------------------------------------------------------- export


@pytest.fixture(scope="module")
def trained_run(written, tmp_path_factory):
    """A one-iteration run started from the reference layout (its critic loaded)."""
    root = tmp_path_factory.mktemp("export")
    path = _write("reference", root, written)
    workdir = root / "run"
    c = _config(str(path))
    c.train.save_every = 1
    exp, _ = cli.to_experiment(c)
    train.train(exp, workdir)
    return workdir, checkpoints.load(workdir, pi0.Pi0Config())


def _obs(config, seed=0):
    rng = np.random.default_rng(seed)
    b = 2
    images = {
        k: jnp.asarray(rng.uniform(-1, 1, (b, config.image_size, config.image_size, 3)), jnp.float32)
        for k in config.image_keys
    }
    return pi0.Observation(
        images=images,
        image_masks={k: jnp.ones((b,), bool) for k in config.image_keys},
        state=jnp.asarray(rng.normal(size=(b, config.action_dim)), jnp.float32),
        tokenized_prompt=jnp.asarray(rng.integers(1, 100, (b, config.max_token_len)), jnp.int32),
        tokenized_prompt_mask=jnp.ones((b, config.max_token_len), bool),
    )


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["openpi", "pytorch", "lerobot"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_export_round_trip(trained_run, fmt, dtype, tmp_path):
    workdir, run = trained_run
    out = export_cli.export_run(str(workdir), fmt, str(tmp_path / fmt), dtype=dtype)
    back = checkpoints.load(out, pi0.Pi0Config())
    want = run.params
    if dtype == "bfloat16":
        want = jax.tree.map(lambda x: np.asarray(x).astype(jnp.bfloat16).astype(np.float32), want)
    got = jax.tree.map(lambda x: np.asarray(x, np.float32), back.params)
    _assert_tree_equal(got, want)
    if fmt != "lerobot":  # LeRobot has no critic
        _assert_tree_equal(
            jax.tree.map(lambda x: np.asarray(x, np.float32), back.heads["value_head"]),
            jax.tree.map(lambda x: np.asarray(np.asarray(x).astype(dtype), np.float32), run.heads["value_head"]),
        )
    _assert_stats_equal(back.norm_stats, run.norm_stats)
    for field in ("pi05", "action_horizon", "max_token_len", "discrete_state_input", "action_dim", "image_size"):
        assert getattr(back.config, field) == getattr(run.config, field), field
    # Same actions for the same noise (deterministic sampler).
    config = run.config
    obs = _obs(config)
    noise = jax.random.normal(jax.random.key(3), (2, config.action_horizon, config.action_dim))
    a = pi0.sample_actions(config, jax.tree.map(jnp.asarray, want), obs, noise, num_steps=2)
    b = pi0.sample_actions(back.config, jax.tree.map(jnp.asarray, got), obs, noise, num_steps=2)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
