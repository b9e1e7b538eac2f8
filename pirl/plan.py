"""Ahead-of-time memory plan: will a recipe fit a target topology, before booking the hardware?

    python -m pirl.plan --config=configs/libero_ppo.py:suite=spatial --mesh=1,4,8
    python -m pirl.plan --config=configs/libero_ppo.py:suite=spatial,pi05 --mesh=data:2,fsdp:4 --memory_gb=80
    python -m pirl.plan --config=configs/libero_ppo.py:suite=spatial --config.rl.trainable=full \\
        --config.mesh.data=1 --config.mesh.fsdp=-1 --mesh=8

For each target mesh it compiles, without running them, the programs a training run uses: the
rollout sampler (``rollout.jit_sample``, train and eval) and the sharded update
(``rl.update.jit_update``), lowered from ``jax.ShapeDtypeStruct`` inputs that carry the run's real
shardings, so nothing is allocated. It prints per device, in GiB:

  params     the parameter tree, placed by the FSDP rule (exact, from the sharded shapes);
  optimizer  AdamW's μ and ν of the trainable leaves plus the int32 counters (exact);
  buffer     the rollout batch the update consumes: observations (uint8 images), chains, targets;
  sample     scratch of one rollout sampling call (XLA's temp size), KV cache included;
  kv         the prefix KV cache of one rollout call, from the model's sizes (a cross-check);
  eval       scratch of one evaluation sampling call;
  flatten    scratch of batching: the rollout epochs' [R, T, N] arrays → the flat [R·T·N] batch;
  update     scratch of the update (gradients, activations, the re-laid-out batch);
  total      the largest phase of an iteration, as ``pirl.train`` holds its arrays (on top of
             params + optimizer): rollout = buffer + sample; batching = 3 × buffer + flatten (the
             trajectories, their stacked copy and the flat batch); update = buffer + update
             (the trajectories are released before the update);
             evaluation = eval.

Params are float32, as ``runsetup.init_params`` makes them; ``--params_dtype=bfloat16`` plans for a
checkpoint stored that way (the optimizer's moments follow the params' dtype).

Mesh specs: ``8`` (the config's mesh section resolved on 8 devices), ``1,4,8`` (one row per device
count), ``data:2,fsdp:4`` (explicit axes). Without accelerators the devices are faked on the host
(``--xla_force_host_platform_device_count``, set before JAX starts its backend); XLA's CPU compiler
fuses differently from a GPU's, so its scratch sizes approximate a GPU's rather than equal them.
With a real backend that has enough devices, the programs are compiled for it instead.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from jax.sharding import NamedSharding, PartitionSpec

from pirl import batch as batch_lib
from pirl import cli, experiment, rollout, runsetup, sharding
from pirl.models import pi0
from pirl.rl import flow
from pirl.rl import update as upd

GIB = 2**30
AXES = ("data", "fsdp")


# ---------------------------------------------------------------- targets


def parse_mesh(spec: str, default: sharding.MeshConfig) -> list[tuple[int, sharding.MeshConfig]]:
    """``--mesh`` → [(device count, MeshConfig)].

    "8" or "1,4,8": the config's mesh section on that many devices; "data:2,fsdp:4": explicit axes.
    """
    parts = [p.strip() for p in spec.split(",")]
    bad = f"--mesh={spec!r}: expected device counts like '8' or '1,4,8', or axes like 'data:2,fsdp:4'"
    if not spec.strip() or not all(parts):
        raise ValueError(bad)
    if all(re.fullmatch(r"\d+", p) for p in parts):
        counts = [int(p) for p in parts]
        if min(counts) < 1:
            raise ValueError(f"{bad} (device counts must be ≥ 1)")
        return [(n, default) for n in counts]
    sizes = {}
    for p in parts:
        m = re.fullmatch(r"(\w+):(\d+)", p)
        if not m:
            raise ValueError(f"{bad}; cannot read {p!r}")
        axis, size = m.group(1), int(m.group(2))
        if axis not in AXES:
            raise ValueError(f"--mesh={spec!r}: unknown axis {axis!r}{experiment.closest(axis, AXES)}; axes: {AXES}")
        if axis in sizes:
            raise ValueError(f"--mesh={spec!r}: axis {axis!r} given twice")
        if size < 1:
            raise ValueError(f"--mesh={spec!r}: axis {axis} has size {size}; sizes must be ≥ 1")
        sizes[axis] = size
    data, fsdp = sizes.get("data", 1), sizes.get("fsdp", 1)
    return [(data * fsdp, dataclasses.replace(default, data=data, fsdp=fsdp))]


def fake_host_devices(n: int) -> None:
    """Asks XLA for ``n`` host (CPU) devices. Takes effect only if JAX has not started its backend
    yet; a count already in XLA_FLAGS is left alone. Also skips LLVM's optimizer: it costs most of a
    CPU compile and does not change the buffer sizes reported here."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        flags += f" --xla_force_host_platform_device_count={n}"
    if "xla_backend_optimization_level" not in flags:
        flags += " --xla_backend_optimization_level=0"
    os.environ["XLA_FLAGS"] = flags.strip()


def devices_for(n: int) -> list[jax.Device]:
    """n devices of the default backend, else n host devices, else an error saying how to get them."""
    for devs in (jax.devices(), jax.devices("cpu")):
        if len(devs) >= n:
            return list(devs[:n])
    raise ValueError(
        f"the mesh needs {n} devices; this process has {len(jax.devices())} {jax.default_backend()} and "
        f"{len(jax.devices('cpu'))} host devices. Run `python -m pirl.plan` in a fresh process (it fakes "
        f"host devices), or set XLA_FLAGS=--xla_force_host_platform_device_count={n} before JAX starts"
    )


# ---------------------------------------------------------------- abstract inputs


def abstract_params(exp: experiment.Experiment, model: pi0.Pi0Config, dtype: str | None = None) -> dict:
    """{"model", heads} as ShapeDtypeStructs (float32 as ``runsetup.init_params``; ``dtype`` recasts floats,
    e.g. bfloat16 for a checkpoint stored that way)."""
    shapes = jax.eval_shape(functools.partial(runsetup.init_params, exp, model), jax.random.key(0))
    if dtype is None:
        return shapes
    cast = jnp.dtype(dtype)
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, cast if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype), shapes
    )


def abstract_state(exp: experiment.Experiment, params) -> upd.TrainState:
    return jax.eval_shape(functools.partial(upd.init_train_state, exp.rl), params)


def abstract_observation(model: pi0.Pi0Config, n: int) -> pi0.Observation:
    """An Observation of n rows as the rollout keeps them on device: uint8 images, int32 tokens."""
    obs = jax.eval_shape(functools.partial(pi0.fake_observation, model, n))
    images = {k: jax.ShapeDtypeStruct(v.shape, jnp.uint8) for k, v in obs.images.items()}
    return obs.replace(images=images)


def abstract_batch(exp: experiment.Experiment, model: pi0.Pi0Config, params, n: int) -> upd.Batch:
    """The update's input for a rollout of n samples; the sampler's output fixes the shapes of the
    stored chains and log-probs (they depend on the policy's options)."""
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
    out = jax.eval_shape(
        functools.partial(flow.sample, exp.policy, model, train=True), params, abstract_observation(model, 1), key
    )

    def rows(x):
        return jax.ShapeDtypeStruct((n, *x.shape[1:]), x.dtype)

    scalar = jax.ShapeDtypeStruct((n,), jnp.float32)
    return upd.Batch(
        obs=abstract_observation(model, n),
        transitions=jax.tree.map(rows, out.transitions),
        logp_old=rows(out.logp),
        value_old=scalar,
        advantages=scalar,
        returns=scalar,
        weights=scalar,
    )


def with_shardings(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def bytes_per_device(tree, shardings) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs placed by ``shardings`` (the largest
    shard, so uneven splits count their bigger piece)."""
    total = 0
    for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings), strict=True):
        total += math.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
    return total


def inference_batch(num_envs: int, mesh_size: int) -> int:
    """Rows of one sampling call: the Actor pads a stage's envs to a multiple of the mesh."""
    return -(-num_envs // mesh_size) * mesh_size


def kv_cache_bytes(model: pi0.Pi0Config, batch_per_device: int) -> int:
    """The prefix pass's (K, V) cache: layers × 2 × b × prefix tokens × kv heads × head dim × bytes."""
    g = model.paligemma
    itemsize = jnp.dtype(model.dtype).itemsize
    return g.depth * 2 * batch_per_device * model.prefix_len * g.num_kv_heads * g.head_dim * itemsize


# ---------------------------------------------------------------- the plan


@dataclasses.dataclass(frozen=True)
class Row:
    """One target's per-device bytes."""

    devices: int
    mesh: str
    platform: str
    rollout_rows: int  # rows per device of one rollout sampling call
    eval_rows: int
    params: int
    optimizer: int
    buffer: int
    sample: int
    kv: int
    eval: int
    flatten: int
    update: int
    update_args: int  # XLA's argument size of the update: params + optimizer + buffer + key, less unused inputs
    budget: int
    compile_s: float

    @property
    def phases(self) -> dict[str, int]:
        """Peak bytes of each phase of a training iteration (module doc)."""
        resident = self.params + self.optimizer
        return {
            "rollout": resident + self.buffer + self.sample,
            "batching": resident + 3 * self.buffer + self.flatten,
            "update": resident + self.buffer + self.update,
            "eval": resident + self.eval,
        }

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phases.get)

    @property
    def total(self) -> int:
        return max(self.phases.values())

    @property
    def fits(self) -> bool:
        return self.total <= self.budget


def _temp(compiled) -> int:
    return int(compiled.memory_analysis().temp_size_in_bytes)


def plan_one(
    exp: experiment.Experiment,
    mesh_config: sharding.MeshConfig,
    devices: list[jax.Device],
    memory_gb: float,
    params_dtype: str | None = None,
) -> Row:
    """Compiles the sampler (train, eval) and the update for one mesh and measures them."""
    try:
        mesh = sharding.make_mesh(mesh_config, devices)
    except ValueError as e:
        raise ValueError(f"{e} (config mesh section data={mesh_config.data}, fsdp={mesh_config.fsdp})") from None
    n = mesh.size
    try:
        sharding.check_batch_divisible(mesh, exp.rl.micro_batch_size, "rl.micro_batch_size")
    except ValueError as e:
        raise ValueError(f"{e}: pick a device count that divides it or change --config.rl.micro_batch_size") from None
    model = exp.model.pi0_config()
    params = abstract_params(exp, model, params_dtype)
    state = abstract_state(exp, params)
    state_sh = sharding.param_shardings(mesh, state, mesh_config.fsdp_min_bytes)
    data_sh = sharding.batch_sharding(mesh)
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=sharding.replicated(mesh))
    params_in = with_shardings(state.params, state_sh.params)
    t0 = time.perf_counter()

    def sample_temp(envs: int, train: bool) -> tuple[int, int]:
        rows = inference_batch(envs, n)
        obs = abstract_observation(model, rows)
        obs = with_shardings(obs, jax.tree.map(lambda _: data_sh, obs))
        compiled = rollout.jit_sample(exp.policy, model, mesh, train=train).lower(params_in, obs, key).compile()
        return _temp(compiled), rows // n

    sample, rollout_rows = sample_temp(exp.env.num_envs // exp.env.num_stages, True)
    evaluation, eval_rows = sample_temp(exp.eval.num_envs, False)

    n_samples = experiment.rollout_samples(exp)
    batch = abstract_batch(exp, model, params, n_samples)
    # to_batch stacks the R rollout epochs' [T, N] trajectories (N split over the batch axes).
    rtn = (exp.train.rollout_epochs, experiment.chunk_steps(exp), exp.env.num_envs)
    stacked_sh = NamedSharding(mesh, PartitionSpec(None, None, sharding.BATCH_AXES))
    stacked = jax.tree.map(lambda x: jax.ShapeDtypeStruct((*rtn, *x.shape[1:]), x.dtype, sharding=stacked_sh), batch)
    flatten = _temp(batch_lib._flattener(mesh).lower(stacked).compile())
    step = upd.jit_update(exp.policy, model, exp.rl, mesh, state_sh)
    compiled = step.lower(state, batch, key).compile()
    platform = devices[0].platform
    return Row(
        devices=n,
        mesh=f"data {mesh.shape['data']} × fsdp {mesh.shape['fsdp']}",
        platform=platform,
        rollout_rows=rollout_rows,
        eval_rows=eval_rows,
        sample=sample,
        kv=kv_cache_bytes(model, rollout_rows),
        eval=evaluation,
        flatten=flatten,
        budget=int(memory_gb * GIB),
        compile_s=time.perf_counter() - t0,
        **update_bytes(mesh, state, state_sh, batch, compiled),
    )


def update_bytes(mesh, state: upd.TrainState, state_sh, batch: upd.Batch, compiled) -> dict[str, int]:
    """Per-device bytes of the update phase: params and optimizer (placed by ``state_sh``), the
    rollout buffer (split over the batch axes), and the compiled update's scratch and argument
    sizes. Their sum params + optimizer + buffer + update is the plan's update phase."""
    mem = compiled.memory_analysis()
    data_sh = sharding.batch_sharding(mesh)
    opt_tree = (state.opt_state, state.step, state.skipped)
    opt_sh = (state_sh.opt_state, state_sh.step, state_sh.skipped)
    return {
        "params": bytes_per_device(state.params, state_sh.params),
        "optimizer": bytes_per_device(opt_tree, opt_sh),
        "buffer": bytes_per_device(batch, jax.tree.map(lambda _: data_sh, batch)),
        "update": int(mem.temp_size_in_bytes),
        "update_args": int(mem.argument_size_in_bytes),
    }


def advice(row: Row, exp: experiment.Experiment) -> str:
    """What to change when a row does not fit, the largest component first."""
    fixes = []
    resident = row.params + row.optimizer
    if exp.rl.trainable == "full" and row.optimizer > 0.2 * row.budget:
        fixes.append(
            (row.optimizer, "train fewer parameters (--config.rl.trainable=expert_only, or a *_lora variant + lora)")
        )
    if row.devices > 1 and exp.mesh.fsdp == 1 and resident > 0.2 * row.budget:
        fixes.append((resident, "shard params and optimizer over the devices (--config.mesh.fsdp=-1)"))
    if row.update >= row.sample:
        micro = exp.rl.micro_batch_size
        fixes.append((row.update, f"a smaller micro-batch (--config.rl.micro_batch_size={max(micro // 2, 1)})"))
    else:
        fixes.append((row.sample, "fewer envs per sampling call (--config.env.num_stages=2 or fewer env.num_envs)"))
    if not exp.model.remat:
        fixes.append((max(row.update, row.sample), "rematerialize the blocks (--config.model.remat=True)"))
    fixes.append(
        (
            2 * row.buffer + row.flatten,
            "a smaller rollout per update (--config.train.rollout_epochs or --config.env.num_envs lower)",
        )
    )
    fixes.sort(key=lambda f: -f[0])
    return "; ".join(f for _, f in fixes) + "; or more devices (activations and the buffer split over them)"


def describe(exp: experiment.Experiment, params_dtype: str | None = None) -> str:
    model = exp.model.pi0_config()
    name = "π0.5" if model.pi05 else "π0"
    n_params = pi0.count_params(pi0.param_shapes(model))
    return (
        f"{name} ({model.paligemma_variant} + {model.action_expert_variant}, {n_params / 1e9:.2f}B params "
        f"in {params_dtype or 'float32'}, compute {exp.model.dtype}, remat={exp.model.remat}), "
        f"trainable={exp.rl.trainable}, K={exp.policy.num_steps}, "
        f"{exp.env.num_envs} envs / {exp.env.num_stages} stage(s), rollout {experiment.rollout_samples(exp)} samples, "
        f"micro-batch {exp.rl.micro_batch_size}, eval {exp.eval.num_envs} envs"
    )


COLUMNS = ("params", "optimizer", "buffer", "sample", "kv", "eval", "flatten", "update")


def format_table(rows: list[Row]) -> str:
    head = ["devices", "mesh", "rows/dev", *COLUMNS, "total", "peak in", "budget", "fits"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = [str(r.devices), r.mesh, f"{r.rollout_rows}/{r.eval_rows}"]
        cells += [f"{getattr(r, c) / GIB:.2f}" for c in COLUMNS]
        cells += [f"{r.total / GIB:.2f}", r.peak_phase, f"{r.budget / GIB:.3g}", "yes" if r.fits else "NO"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def checks(row: Row) -> list[str]:
    """Consistency notes: the analytic KV cache must fit in the sampler's scratch, and XLA's
    argument size of the update must be what the sharded shapes add up to (+ the 8-byte key)."""
    notes = []
    if row.kv > row.sample:
        notes.append(f"{row.devices} devices: KV cache {row.kv / GIB:.2f} GiB exceeds the sampler's scratch")
    expected = row.params + row.optimizer + row.buffer
    if abs(row.update_args - expected) > max(64, 1e-3 * expected):
        notes.append(
            f"{row.devices} devices: XLA's update arguments {row.update_args} B differ from the "
            f"sharded shapes' {expected} B"
        )
    return notes


# ---------------------------------------------------------------- command line


def main(argv):
    del argv
    config = _CONFIG.value
    extra = cli.recipe_sections(config)
    try:
        exp, _ = cli.to_experiment(config, extra)
        targets = parse_mesh(_MESH.value, exp.mesh)
        fake_host_devices(max(n for n, _ in targets))
        print(f"# plan: {describe(exp, _PARAMS_DTYPE.value or None)}")
        rows = []
        for n, mesh_config in targets:
            row = plan_one(exp, mesh_config, devices_for(n), _MEMORY_GB.value, _PARAMS_DTYPE.value or None)
            rows.append(row)
            print(f"# compiled for {n} {row.platform} device(s) in {row.compile_s:.0f} s", flush=True)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    platforms = sorted({r.platform for r in rows})
    print(f"# GiB per device (--memory_gb in GiB), compiled for {', '.join(platforms)}")
    print(format_table(rows))
    if "cpu" in platforms:
        print("# CPU-compiled scratch sizes (sample, eval, update) approximate a GPU's: XLA fuses differently there.")
    print(
        "# total: the largest phase on top of params + optimizer: rollout (buffer + sample), batching "
        "(3 × buffer + flatten), update (buffer + update), eval; kv is part of sample"
    )
    for note in (c for r in rows for c in checks(r)):
        print(f"# check: {note}")
    for r in rows:
        if not r.fits:
            print(f"# {r.devices} devices do not fit {_MEMORY_GB.value:g} GiB: {advice(r, exp)}")


if __name__ == "__main__":
    _CONFIG = cli.define_config_flag()
    _MESH = flags.DEFINE_string("mesh", "1", "device counts '1,4,8' or axes 'data:2,fsdp:4'")
    _MEMORY_GB = flags.DEFINE_float("memory_gb", 80.0, "memory per device, GiB")
    _PARAMS_DTYPE = flags.DEFINE_string("params_dtype", "", "recast float params (e.g. bfloat16); '' float32")
    cli.run(main)
