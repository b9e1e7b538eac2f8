"""The PPO / GRPO update: TrainState, optimizer, trainable sets, and the jitted step.

One call runs ``update_epochs`` passes over a rollout of N samples: each pass shuffles (within each
device's shard of the batch, see ``shard_layout``), splits into N / minibatch_size minibatches (one
optimizer step each), and each minibatch into micro-batches whose gradients are accumulated; the
three loops are nested ``lax.scan``s.

Trainable sets (on param paths, see ``critic`` for the layout):
  full         everything;
  expert_only  the action expert (PaliGemma/llm leaves whose module name ends in "_1"), the
               projections outside PaliGemma, and the heads; SigLIP and the VLM are frozen and the
               prefix pass runs without gradients;
  lora         leaves with "lora" in their path, and the heads.
Frozen leaves are never differentiated, have no optimizer state, and are passed through untouched,
so they stay bitwise equal.

Old log-probs (``recompute_logp``, on by default). The rollout's ``logp_old`` comes from the
sampler, a different compiled program: under the same params it differs from the update's own
re-scoring by float rounding (~1e-6 on CPU, more with another inference precision), so the first
ratio would not be 1. With ``recompute_logp`` the update takes θ_old's log-probs (and values) from
inside its own program instead:
  epoch 0, minibatch 0  params are θ_old by definition, so the step's own forward IS θ_old's:
                        log r = logp − stop_gradient(logp), exactly 0 with gradient ∇logp;
  every other step      a forward-only pass over the rollout under the incoming params, run
                        before the first step (skipped when there is one step in all).
Matching a separate pass bit for bit would depend on XLA's fusion and micro-batch layout; the
stop_gradient form is exact whatever the compiler does. ``logp_recompute_diff`` logs
max |θ_old log-prob − rollout log-prob| so a sampler/trainer mismatch stays visible.

Values. The value-clip anchor is the rollout's value (``Batch.value_old``), the one GAE and the
returns were computed with, as the reference's ``prev_values``: for the one-step Flow-SDE critic
that is the mean over the K denoising steps, while the update regresses the value at the scored
step k* (see ``flow.sample`` / ``flow.score``), so a recomputed value would be another quantity.

Learning rates. ``lr_schedule`` "cosine" multiplies both lr and value_lr by the factor of an optax
cosine decay (to ``min_lr_ratio``, over ``lr_decay_steps``) evaluated at ``TrainState.step``, the
number of iterations done: one schedule step per iteration whatever the optimizer steps inside it,
as the reference steps its scheduler once per training call, and restored with the state on resume.

Axis letters: N rollout samples, E epochs, M minibatches, U micro-batches per minibatch, b micro
batch size.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Float, Int

from pirl import ranges, sharding
from pirl.rl import flow, losses

TRAINABLE_SETS = ("full", "expert_only", "lora")
HEAD_KEYS = ("value_head", "noise_head")
LR_SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class UpdateConfig:
    algorithm: str = "ppo"  # "ppo" (with the critic) | "grpo" (no value loss)
    lr: float = 5e-6
    value_lr: float = 1e-4
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    trainable: str = "full"
    update_epochs: int = 4
    minibatch_size: int = 2048  # samples per optimizer step (global)
    micro_batch_size: int = 128  # samples per forward/backward (global)
    clip_eps: float = 0.2
    value_clip: float = 0.2
    huber_delta: float = 10.0
    value_coef: float = 1.0
    entropy_bonus: float = 0.0
    shuffle: bool = True
    recompute_logp: bool = True  # θ_old log-probs from the update's own program (module doc)
    lr_schedule: str = "constant"  # "constant" | "cosine" (per iteration; module doc)
    lr_decay_steps: int = 0  # cosine: iterations from lr to min_lr_ratio·lr (then held)
    min_lr_ratio: float = 0.0  # cosine: final lr / lr, for the policy and the value head alike

    def __post_init__(self):
        if self.algorithm not in ("ppo", "grpo"):
            raise ValueError(f"algorithm must be 'ppo' or 'grpo', got {self.algorithm!r}")
        ranges.check(
            "rl",
            self,
            lr=">= 0",
            value_lr=">= 0",
            b1="[0, 1)",
            b2="[0, 1)",
            eps="> 0",
            weight_decay=">= 0",
            grad_clip="> 0",
            update_epochs=">= 1",
            minibatch_size=">= 1",
            micro_batch_size=">= 1",
            clip_eps="> 0",
            value_clip=">= 0",
            huber_delta="> 0",
            value_coef=">= 0",
            entropy_bonus=">= 0",
            lr_decay_steps=">= 0",
            min_lr_ratio="[0, 1]",
        )
        ranges.one_of("rl", self, lr_schedule=LR_SCHEDULES, trainable=TRAINABLE_SETS)
        if self.lr_schedule == "cosine" and self.lr_decay_steps < 1:
            raise ValueError(f"lr_schedule 'cosine' needs lr_decay_steps >= 1, got {self.lr_decay_steps}")
        if self.minibatch_size % self.micro_batch_size:
            raise ValueError(
                f"minibatch_size {self.minibatch_size} is not a multiple of micro_batch_size {self.micro_batch_size}"
            )


@flax.struct.dataclass
class TrainState:
    step: Int[Array, ""]  # number of updates (rollout iterations) applied
    params: Any
    opt_state: Any  # optimizer state of the trainable leaves only
    skipped: Int[Array, ""]  # optimizer steps skipped for a non-finite loss or gradient


@flax.struct.dataclass
class Batch:
    """One rollout, flattened to N samples (chunk steps × envs)."""

    obs: Any  # pi0.Observation [N, ...]
    transitions: flow.Transitions
    logp_old: Array  # [N] | [N, C] | [N, C, E]
    value_old: Float[Array, " N"]
    advantages: Float[Array, " N"]
    returns: Float[Array, " N"]
    weights: Float[Array, " N"]  # 0 for masked samples, max_episode_steps/valid env steps otherwise


# ---------------------------------------------------------------- trainable sets


def _path_keys(path) -> tuple[str, ...]:
    return tuple(str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path)


def _label(trainable: str, keys: tuple[str, ...]) -> str:
    if keys[0] == "value_head":
        return "value"
    if keys[0] in HEAD_KEYS:
        return "policy"
    if keys[0] != "model":
        raise ValueError(f"unexpected top-level param key {keys[0]!r} (expected 'model' or a head)")
    if trainable == "full":
        return "policy"
    if trainable == "lora":
        return "policy" if any("lora" in k for k in keys) else "frozen"
    # expert_only: inside PaliGemma only the action expert ("_1" modules) trains.
    if keys[1] != "PaliGemma":
        return "policy"
    return "policy" if keys[2] == "llm" and any(k.endswith("_1") for k in keys[3:]) else "frozen"


def param_labels(trainable: str, params) -> Any:
    """Tree of "policy" / "value" / "frozen" per leaf, from the leaf's path."""
    if trainable == "lora" and not any(
        "lora" in k for p, _ in jax.tree_util.tree_leaves_with_path(params) for k in _path_keys(p)
    ):
        raise ValueError("trainable set 'lora' needs a model with LoRA leaves (a *_lora variant)")
    labels = jax.tree_util.tree_map_with_path(lambda p, _: _label(trainable, _path_keys(p)), params)
    if "policy" not in jax.tree.leaves(labels):
        raise ValueError(f"trainable set {trainable!r} selects no policy parameter")
    return labels


def split_params(params, labels) -> tuple[Any, Any]:
    """(trainable, frozen): the same tree twice, with None where a leaf belongs to the other."""
    train = jax.tree.map(lambda p, lab: None if lab == "frozen" else p, params, labels)
    frozen = jax.tree.map(lambda p, lab: p if lab == "frozen" else None, params, labels)
    return train, frozen


def merge_params(train, frozen):
    return jax.tree.map(lambda a, b: b if a is None else a, train, frozen, is_leaf=lambda x: x is None)


def lr_factor(config: UpdateConfig, iteration: Int[Array, ""] | int) -> Float[Array, ""]:
    """The multiplier of lr and value_lr at ``iteration`` (0-based, = ``TrainState.step``).

    cosine: min_lr_ratio + (1 − min_lr_ratio)·½(1 + cos(π·i / lr_decay_steps)), held at
    min_lr_ratio after lr_decay_steps: the reference's "cosine" (HF transformers
    ``get_cosine_with_min_lr_schedule_with_warmup``, no warm-up, half a cycle) as an optax schedule.
    """
    if config.lr_schedule == "constant":
        return jnp.ones((), jnp.float32)
    schedule = optax.cosine_decay_schedule(1.0, config.lr_decay_steps, alpha=config.min_lr_ratio)
    return jnp.asarray(schedule(iteration), jnp.float32)


def learning_rates(config: UpdateConfig, iteration: Int[Array, ""] | int) -> tuple[Array, Array]:
    """(policy lr, value lr) used by the update of iteration ``iteration``."""
    factor = lr_factor(config, iteration)
    return config.lr * factor, config.value_lr * factor


def make_optimizer(
    config: UpdateConfig, train_labels, iteration: Int[Array, ""] | int = 0
) -> optax.GradientTransformation:
    """Global-norm clip over all trainable leaves, then AdamW per group (value head at value_lr),
    at the learning rates of ``iteration``. The optimizer state's layout does not depend on the
    rates, so one state serves every iteration."""
    lr, value_lr = learning_rates(config, iteration)

    def adamw(rate):
        return optax.adamw(rate, b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=config.weight_decay)

    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip),
        optax.multi_transform({"policy": adamw(lr), "value": adamw(value_lr)}, train_labels),
    )


def init_train_state(config: UpdateConfig, params) -> TrainState:
    """Step 0 of ``params``: the trainable leaves become float32 masters (and so do their AdamW
    moments) whatever dtype they arrive in; frozen leaves are kept as they are."""
    labels = param_labels(config.trainable, params)

    def master(p, label):
        if label == "frozen" or not jnp.issubdtype(p.dtype, jnp.floating) or p.dtype == jnp.float32:
            return p
        return p.astype(jnp.float32)  # numpy stays on the host, jax arrays where they are

    params = jax.tree.map(master, params, labels)
    train, _ = split_params(params, labels)
    train_labels, _ = split_params(labels, labels)
    opt_state = make_optimizer(config, train_labels).init(train)
    # Distinct scalars: a donated state must not hold the same buffer twice.
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state, skipped=jnp.zeros((), jnp.int32)
    )


# ---------------------------------------------------------------- the update


def _loss(
    policy: flow.FlowPolicyConfig,
    model_config,
    config: UpdateConfig,
    train,
    frozen,
    mb: Batch,
    first: bool | Array = False,
    pre: Array | None = None,
):
    """Loss and metrics of one micro-batch.

    ``first``: params are still θ_old (epoch 0, minibatch 0). ``pre``: θ_old's log-prob from the
    update's forward-only pass; with ``recompute_logp`` it stands in for the rollout's
    ``mb.logp_old`` (which is used if ``pre`` is None). The value-clip anchor is always the
    rollout's ``mb.value_old`` (module doc).
    """
    params = merge_params(train, frozen)
    logp, entropy, value = flow.score(
        policy, model_config, params, mb.obs, mb.transitions, prefix_grad=config.trainable != "expert_only"
    )
    if logp.shape != mb.logp_old.shape:
        raise ValueError(f"logp {logp.shape} and logp_old {mb.logp_old.shape} differ in shape")
    if config.recompute_logp:
        pre_logp = pre if pre is not None else mb.logp_old
        # Both branches have derivative 1 in logp; the first is 0 by IEEE subtraction of a value
        # from itself, not by two programs happening to round alike.
        log_ratio = jnp.where(first, logp - jax.lax.stop_gradient(logp), logp - pre_logp)
        logp_theta_old = jnp.where(first, jax.lax.stop_gradient(logp), pre_logp)
    else:
        log_ratio = logp - mb.logp_old
        # Only meaningful on the first step (params = θ_old); ``update`` reports it from there.
        logp_theta_old = jax.lax.stop_gradient(logp)
    total, metrics = losses.clipped_surrogate(log_ratio, mb.advantages, mb.weights, config.clip_eps)
    metrics["logp_recompute_diff"] = losses.valid_max_abs(logp_theta_old - mb.logp_old, mb.weights)
    if config.algorithm == "ppo":
        vl, vm = losses.value_loss(value, mb.value_old, mb.returns, mb.weights, config.value_clip, config.huber_delta)
        total = total + config.value_coef * vl
        metrics |= vm
    ent_loss, em = losses.entropy_bonus(entropy, mb.weights, config.entropy_bonus)
    if config.entropy_bonus:
        total = total + ent_loss
    metrics |= em
    metrics["loss"] = total
    return total, metrics


def _all_finite(tree) -> Array:
    return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]))


def _where_tree(pred, a, b):
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def shard_permutations(key: jax.Array, n: int, shards: int) -> Int[Array, "S n/S"]:
    """An independent permutation of each shard's n/shards row indices (local to the shard)."""
    rows = jnp.broadcast_to(jnp.arange(n // shards), (shards, n // shards))
    return jax.random.permutation(key, rows, axis=1, independent=True)


def shard_layout(x: Array, n_mb: int, n_micro: int, shards: int, perm: Array | None = None) -> Array:
    """[N, ...] → [M, U, b, ...] without moving rows between shards.

    Shard s holds rows [s·N/S, (s+1)·N/S). Micro-batch (m, u) is the concatenation over s of shard
    s's rows at positions [(m·U + u)·b/S, (m·U + u + 1)·b/S) of ``perm[s]`` (identity if None).
    Sharded over S on its b axis, each device keeps exactly its own rows: a global shuffle would
    instead gather across devices, which XLA does by holding the whole rollout on every device."""
    local = x.reshape(shards, x.shape[0] // shards, *x.shape[1:])
    if perm is not None:
        local = jax.vmap(lambda rows, p: rows[p])(local, perm)
    local = local.reshape(shards, n_mb, n_micro, -1, *x.shape[1:])
    return jnp.moveaxis(local, 0, 2).reshape(n_mb, n_micro, -1, *x.shape[1:])


def unshard_layout(y: Array, shards: int) -> Array:
    """The inverse of ``shard_layout`` without a permutation: [M, U, b, ...] → [N, ...]."""
    m, u, b = y.shape[:3]
    local = y.reshape(m, u, shards, b // shards, *y.shape[3:])
    return jnp.moveaxis(local, 2, 0).reshape(m * u * b, *y.shape[3:])


def update(
    policy: flow.FlowPolicyConfig,
    model_config,
    config: UpdateConfig,
    state: TrainState,
    batch: Batch,
    rng: jax.Array,
    mesh: Mesh | None = None,
    shards: int | None = None,
) -> tuple[TrainState, dict[str, Float[Array, "E M"]]]:
    """Runs all epochs × minibatches × micro-batches; returns the new state and per-minibatch
    metrics (policy/value losses, approx_kl, clip_fraction, ratio, value_clip_ratio,
    explained_variance, entropy, grad_norm, skipped, logp_recompute_diff, and the iteration's lr and
    value_lr).

    The batch lies on ``shards`` pieces of N/shards consecutive rows (default: the mesh's devices,
    1 without a mesh); every micro-batch takes an equal share of rows from each piece, shuffled
    within the piece (``shard_layout``), so no sample leaves its device.

    ``logp_recompute_diff`` is the max |θ_old log-prob − rollout log-prob| over the minibatch's
    valid samples; without ``recompute_logp`` only the first step knows θ_old's log-probs, so every
    entry repeats that step's value."""
    n = batch.weights.shape[0]
    if n % config.minibatch_size:
        raise ValueError(f"rollout of {n} samples is not a multiple of minibatch_size {config.minibatch_size}")
    if config.algorithm == "ppo" and policy.value_source == "none":
        raise ValueError("PPO needs a critic: set value_source to 'expert' or 'vlm'")
    n_mb, n_micro = n // config.minibatch_size, config.minibatch_size // config.micro_batch_size
    if shards is None:
        shards = 1 if mesh is None else mesh.size
    if config.micro_batch_size % shards:
        raise ValueError(
            f"micro_batch_size {config.micro_batch_size} does not split over the batch's {shards} shards (devices)"
        )
    labels = param_labels(config.trainable, state.params)
    train, frozen = split_params(state.params, labels)
    train_labels, _ = split_params(labels, labels)
    tx = make_optimizer(config, train_labels, state.step)
    lr, value_lr = learning_rates(config, state.step)
    grad_fn = jax.value_and_grad(functools.partial(_loss, policy, model_config, config), has_aux=True)

    def constrain(x):
        if mesh is None:
            return x
        spec = PartitionSpec(None, None, sharding.BATCH_AXES)
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    def constrain_rows(x):
        return x if mesh is None else jax.lax.with_sharding_constraint(x, sharding.batch_sharding(mesh))

    def layout(tree, perm=None):
        return jax.tree.map(lambda x: constrain(shard_layout(x, n_mb, n_micro, shards, perm)), tree)

    def minibatch_step(carry, xs):
        tr, opt_state, skipped = carry
        (mbs, pres), first = xs

        def micro_step(acc, xs):
            mb, pre_mb = xs
            (_, metrics), grads = grad_fn(tr, frozen, mb, first, pre_mb)
            return jax.tree.map(jnp.add, acc, grads), metrics

        zeros = jax.tree.map(jnp.zeros_like, tr)
        grads, metrics = jax.lax.scan(micro_step, zeros, (mbs, pres))
        grads = jax.tree.map(lambda g: g / n_micro, grads)
        metrics = {k: m.max(axis=0) if k in _MAX_METRICS else m.mean(axis=0) for k, m in metrics.items()}
        grad_norm = optax.tree.norm(grads)
        updates, new_opt = tx.update(grads, opt_state, tr)
        new_tr = optax.apply_updates(tr, updates)
        # The new params too: a finite gradient can still step to inf/NaN (an lr or update that
        # overflows), and those params would be saved and sampled from.
        ok = jnp.isfinite(grad_norm) & jnp.isfinite(metrics["loss"]) & _all_finite(new_tr)
        metrics |= {"grad_norm": grad_norm, "skipped": (~ok).astype(jnp.float32), "lr": lr, "value_lr": value_lr}
        carry = (_where_tree(ok, new_tr, tr), _where_tree(ok, new_opt, opt_state), skipped + (~ok))
        return carry, metrics

    pre = None
    if config.recompute_logp and config.update_epochs * n_mb > 1:
        pre = _recompute_old(policy, model_config, state.params, layout(batch))
        pre = jax.tree.map(lambda x: constrain_rows(unshard_layout(x, shards)), pre)

    def epoch(carry, xs):
        key, e = xs
        perm = shard_permutations(key, n, shards) if config.shuffle else None
        first = (e == 0) & (jnp.arange(n_mb) == 0)
        return jax.lax.scan(minibatch_step, carry, (layout((batch, pre), perm), first))

    carry = (train, state.opt_state, state.skipped)
    keys = jax.random.split(rng, config.update_epochs)
    carry, metrics = jax.lax.scan(epoch, carry, (keys, jnp.arange(config.update_epochs)))
    if not config.recompute_logp:
        d = metrics["logp_recompute_diff"]
        metrics["logp_recompute_diff"] = jnp.broadcast_to(d[0, 0], d.shape)
    new_train, opt_state, skipped = carry
    new_state = TrainState(
        step=state.step + 1, params=merge_params(new_train, frozen), opt_state=opt_state, skipped=skipped
    )
    return new_state, metrics


_MAX_METRICS = ("logp_recompute_diff",)


def _recompute_old(policy: flow.FlowPolicyConfig, model_config, params, shaped: Batch) -> Array:
    """θ_old's log-prob of every sample, forward only, micro-batch by micro-batch: [M, U, b, ...]."""

    def one(mb: Batch):
        logp, _, _ = flow.score(policy, model_config, params, mb.obs, mb.transitions, prefix_grad=False)
        return logp

    return jax.lax.map(lambda mbs: jax.lax.map(one, mbs), shaped)


def jit_update(
    policy: flow.FlowPolicyConfig,
    model_config,
    config: UpdateConfig,
    mesh: Mesh,
    state_sharding,
):
    """``update`` jitted with explicit shardings: state as given (donated), batch split over the
    batch axes, rng and metrics replicated."""
    fn = functools.partial(update, policy, model_config, config, mesh=mesh)
    rep = sharding.replicated(mesh)
    return jax.jit(
        fn,
        in_shardings=(state_sharding, sharding.batch_sharding(mesh), rep),
        out_shardings=(state_sharding, rep),
        donate_argnums=0,
    )
