"""pirl.plan: per-device bytes of params, optimizer, rollout buffer and KV cache against hand counts;
XLA's own argument size as a cross-check; fits / advice; clear errors for bad meshes."""

import dataclasses
import functools
import math
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import quickstart
from pirl import cli, experiment, plan
from pirl.models import pi0
from pirl.rl import flow

ROOT = pathlib.Path(__file__).resolve().parents[1]
MIN_BYTES = 2048  # low enough that some of the tiny model's leaves are FSDP-sharded


def _experiment(**rl):
    c = quickstart.get_config()
    c.mesh.fsdp_min_bytes = MIN_BYTES
    # The sizes the hand counts below assume: 8 envs × 12 chunk steps = 96 samples, micro-batch 48.
    c.env.update(num_envs=8, max_steps=60)
    c.rl.update(minibatch_size=48, micro_batch_size=48)
    c.rl.update(rl)
    exp, _ = cli.to_experiment(c, {"sft": experiment.SFTSection})
    return exp


@pytest.fixture(scope="module")
def planned():
    exp = _experiment(trainable="expert_only")
    targets = plan.parse_mesh("data:2,fsdp:4", exp.mesh)
    assert [(n, m.data, m.fsdp) for n, m in targets] == [(8, 2, 4)]
    n, mesh_config = targets[0]
    return exp, plan.plan_one(exp, mesh_config, plan.devices_for(n), memory_gb=80)


def _leaves(exp):
    model = exp.model.pi0_config()
    heads = jax.eval_shape(functools.partial(flow.init_heads, exp.policy, model), jax.random.key(0))
    tree = {"model": pi0.param_shapes(model)} | heads
    return [(jax.tree_util.keystr(p), x) for p, x in jax.tree_util.tree_leaves_with_path(tree)]


def _on_device(x, fsdp=4):
    # The FSDP rule by hand: a leaf of at least fsdp_min_bytes bytes with some axis divisible by the
    # fsdp size is split fsdp ways (the device keeps nbytes / fsdp); anything else stays whole. The
    # data axis never splits params.
    nbytes = math.prod(x.shape) * np.dtype(x.dtype).itemsize
    if nbytes >= MIN_BYTES and any(d % fsdp == 0 for d in x.shape):
        return nbytes // fsdp
    return nbytes


def test_params_and_optimizer_bytes_match_the_fsdp_rule(planned):
    exp, row = planned
    leaves = _leaves(exp)
    assert any(_on_device(x) < x.size * 4 for _, x in leaves), "no leaf sharded: the test would not test FSDP"
    assert row.params == sum(_on_device(x) for _, x in leaves)
    # expert_only: the action expert ("_1" modules inside PaliGemma/llm), everything outside
    # PaliGemma (projections) and the heads train. AdamW keeps μ and ν (2 × the trainable bytes);
    # int32 counters: one per Adam group (policy, value), plus the state's step and skipped = 16 B.
    trainable = [x for p, x in leaves if "PaliGemma" not in p or ("['llm']" in p and "_1'" in p)]
    assert 0 < len(trainable) < len(leaves)
    assert row.optimizer == 2 * sum(_on_device(x) for x in trainable) + 4 * 4


def test_buffer_and_kv_cache_by_hand(planned):
    _, row = planned
    # Rollout: 8 envs × ⌈60 / 5⌉ = 12 chunk steps = 96 samples over 8 devices → 12 rows each.
    # One sample: 3 cameras × 56·56·3 uint8 = 28224, 3 image-mask bools, state 4 × f32 = 16,
    # prompt 24 × i32 = 96 + 24 mask bools, chain 2 points × 10 × 4 × f32 = 320, k i32 = 4,
    # chunk-level log-prob 4, value_old / advantages / returns / weights 16 → 28707 B.
    assert row.buffer == 12 * (28224 + 3 + 16 + 96 + 24 + 320 + 4 + 4 + 16)
    # KV cache: 8 envs in one stage → 1 row per device; prefix 3 × (56/14)² + 24 = 72 tokens;
    # 2 layers × (K, V) × 1 row × 72 × 1 kv head × head dim 16 × 4 B (float32) = 18432 B.
    assert (row.rollout_rows, row.eval_rows) == (1, 2)  # eval: 10 envs padded to 16 → 2 per device
    assert row.kv == 2 * 2 * 1 * 72 * 1 * 16 * 4
    assert 0 < row.kv <= row.sample
    assert row.update > 0 and row.eval > 0 and row.flatten >= 0
    # XLA's own view of the update's inputs: params + optimizer + buffer + the 8-byte key (every
    # buffer field is read: value_old anchors value clipping).
    assert row.update_args == row.params + row.optimizer + row.buffer + 8
    assert plan.checks(row) == []


def test_fits_flips_with_the_budget(planned):
    exp, row = planned
    # The phases of an iteration on top of params + optimizer: rollout (buffer + sampler scratch),
    # batching (trajectories + stacked copy + flat batch + flattener scratch), update (flat batch +
    # update scratch; pirl.train drops the trajectories first), eval.
    resident = row.params + row.optimizer
    phases = [
        resident + row.buffer + row.sample,
        resident + 3 * row.buffer + row.flatten,
        resident + row.buffer + row.update,
        resident + row.eval,
    ]
    assert row.fits and row.total == max(phases) and row.phases[row.peak_phase] == row.total
    tight = dataclasses.replace(row, budget=int(0.001 * plan.GIB))
    assert not tight.fits
    text = plan.advice(tight, exp)
    assert "micro_batch_size=24" in text and "more devices" in text
    table = plan.format_table([row, tight])
    assert "| yes |" in table and "| NO |" in table and "data 2 × fsdp 4" in table


def test_mesh_specs_and_errors():
    default = _experiment().mesh
    assert [n for n, _ in plan.parse_mesh("1,4,8", default)] == [1, 4, 8]
    assert plan.parse_mesh("8", default)[0][1] == default
    assert plan.parse_mesh("fsdp:8", default)[0][1].data == 1
    for spec, words in (
        ("data:2,fsdq:4", "unknown axis 'fsdq'"),
        ("8x", "expected device counts"),
        ("", "expected device counts"),
        ("4,,8", "expected device counts"),
        ("data:2,data:4", "given twice"),
        ("0", "≥ 1"),
    ):
        with pytest.raises(ValueError, match=words):
            plan.parse_mesh(spec, default)
    with pytest.raises(ValueError, match="needs 64 devices"):
        plan.devices_for(64)


def test_devices_that_do_not_divide_the_micro_batch():
    exp = _experiment()
    # The micro-batch is 48; 5 devices cannot split it. Fails before compiling anything.
    with pytest.raises(ValueError, match=r"rl.micro_batch_size size 48 is not divisible by the 5 devices"):
        plan.plan_one(exp, exp.mesh, plan.devices_for(5), memory_gb=80)


def test_command_line_bad_mesh_is_one_line():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-m", "pirl.plan", "--config=configs/quickstart.py", "--mesh=data:2,fsdq:4"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1].startswith("error: --mesh='data:2,fsdq:4': unknown axis 'fsdq'")
