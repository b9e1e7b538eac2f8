"""Rollouts: the host pool's envs driven by the policy on the mesh, pipelined over pool stages.

``Actor`` is the host ↔ device bridge (observation transform, jitted sampling, action transform);
``collect`` runs one episode per env and returns the device-side ``Trajectory``; ``run_episodes``
is the deterministic version used by evaluation.

Pipelining: with a 2-stage pool, stage 0's envs step while the policy infers for stage 1 and vice
versa; the mesh holds one copy of the params that both stages (and the update) use.

Axis letters: T chunk steps, N envs, C executed actions per chunk, E env action dims, n envs of
one stage.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from pirl import sharding
from pirl.data import norm_stats as ns
from pirl.data import transforms
from pirl.envs import base
from pirl.envs import pool as pool_lib
from pirl.models import pi0
from pirl.rl import flow


def to_observation(inputs: Mapping) -> pi0.Observation:
    """Model inputs → pi0.Observation (uint8 images stay uint8; the model maps them to [-1, 1])."""
    return pi0.Observation(
        images=dict(inputs["images"]),
        image_masks=dict(inputs["image_masks"]),
        state=inputs["state"],
        tokenized_prompt=inputs["tokenized_prompt"],
        tokenized_prompt_mask=inputs["tokenized_prompt_mask"],
    )


def _sample(policy, model, params, obs, rng, train: bool):
    return flow.sample(policy, model, params, obs, rng, train=train)


def jit_sample(policy: flow.FlowPolicyConfig, model: pi0.Pi0Config, mesh: Mesh, *, train: bool):
    """The sampling program of rollouts (``train``) and evaluation: params keep their own
    (FSDP) placement, observations and outputs are split over the batch axes, the key replicated.
    ``pirl.plan`` compiles this same program ahead of time."""
    rep, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    return jax.jit(
        functools.partial(_sample, policy, model, train=train), in_shardings=(None, data, rep), out_shardings=data
    )


def identity_norm_stats(state_dim: int, action_dim: int) -> dict[str, ns.NormStats]:
    """Stats that leave values unchanged under z-score and quantile norm (random-init models)."""

    def one(d):
        return ns.NormStats(mean=np.zeros(d), std=np.ones(d), q01=-np.ones(d), q99=np.ones(d))

    return {"state": one(state_dim), "actions": one(action_dim)}


class Actor:
    """One policy on one mesh: env observations in, env actions (and what RL stores) out.

    Inference batches are padded to a multiple of the mesh's batch size, so any env count runs on
    any mesh; the padding rows are dropped before anything reaches the envs or the buffer.
    """

    def __init__(
        self,
        policy: flow.FlowPolicyConfig,
        model: pi0.Pi0Config,
        transform: transforms.TransformConfig,
        norm_stats: Mapping[str, ns.NormStats],
        tokenizer: transforms.Tokenizer,
        mesh: Mesh,
    ):
        self.policy, self.model, self.transform = policy, model, transform
        self.norm_stats, self.tokenizer, self.mesh = norm_stats, tokenizer, mesh
        self.batch_multiple = mesh.shape["data"] * mesh.shape["fsdp"] // jax.process_count()
        self._sample = {train: jit_sample(policy, model, mesh, train=train) for train in (True, False)}

    def inputs(self, obs: base.BatchObs) -> dict:
        """Host-side model inputs (uint8 images) of a batch of env observations."""
        return transforms.make_model_inputs(
            self.transform, obs.images, obs.state, obs.instruction, self.norm_stats, self.tokenizer, uint8_images=True
        )

    def _pad(self, inputs: dict) -> tuple[dict, int]:
        n = inputs["state"].shape[0]
        extra = -n % self.batch_multiple
        if extra and jax.process_count() > 1:
            # Padding rows would sit inside every host's block of the global batch; rather than
            # cut them out of host-major arrays, several hosts require full batches.
            raise ValueError(
                f"{n} observations do not fill this host's {self.batch_multiple} devices: on several hosts each "
                f"host's envs per pool stage (and eval envs) must be a multiple of its devices"
            )
        if extra:
            inputs = jax.tree.map(lambda x: np.concatenate([x, np.repeat(x[:1], extra, axis=0)]), inputs)
        return inputs, n

    def act(self, params, obs: base.BatchObs, rng: jax.Array, *, train: bool = True):
        """(device inputs [n], PolicySample [n], env actions [n, C, E] numpy) for n observations."""
        inputs, n = self._pad(self.inputs(obs))
        dev = to_observation(sharding.global_batch(self.mesh, inputs))
        out = self._sample[train](params, dev, rng)
        actions = sharding.local_rows(out.actions)[:n]
        env_actions = transforms.to_env_actions(self.transform, actions, obs.state, self.norm_stats)
        if n != inputs["state"].shape[0]:
            dev, out = jax.tree.map(lambda x: x[:n], (dev, out))
        return dev, out, env_actions


@dataclasses.dataclass
class Trajectory:
    """One rollout epoch: T chunk steps × N envs, device arrays with leading axes [T, N].

    ``dones[t]``: the episode ended during chunk t; ``valid[t]``: chunk t was executed (up to and
    including the first done) in an episode that was not cut short by a worker crash: every chunk
    of such an episode is invalid, as are its metrics (absent from ``episodes``). ``crashed``: the
    envs that lost an episode that way [N]. ``steps[t]``: env steps executed in chunk t (the chunk
    size, fewer where an episode ended, 0 after). ``values``: the policy's rollout value of each
    chunk's observation (``flow.PolicySample.value``). ``final_values``: V(last obs of an episode cut at
    chunk t) under auto-reset (bootstrap), else zeros; ``last_values``: V(obs after chunk T − 1) [N].
    """

    inputs: dict
    transitions: flow.Transitions
    logp: jax.Array
    values: jax.Array
    rewards: np.ndarray  # [T, N] chunk rewards (sum over executed steps)
    dones: np.ndarray  # [T, N]
    truncated: np.ndarray  # [T, N]
    valid: np.ndarray  # [T, N]
    steps: np.ndarray  # [T, N] int32
    final_values: np.ndarray  # [T, N]
    last_values: np.ndarray  # [N]
    episodes: dict[str, np.ndarray]  # per finished episode: success_once, return, length, task
    env_steps: int
    timing: dict[str, float]
    crashed: np.ndarray  # [N] bool


def _stack(per_step: list):
    """[T] list of [N, ...] device trees → one [T, N, ...] tree (batch axis stays sharded)."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *per_step)


def collect(
    pool,
    actor: Actor,
    params,
    rng: jax.Array,
    init_ids: np.ndarray,
    num_chunks: int,
    on_frame: Callable[[base.BatchObs, base.ChunkResult | None, int], None] | None = None,
) -> Trajectory:
    """One episode per env (or ``num_chunks`` chunks with auto-reset), stages pipelined.

    The sampling key of stage s at chunk t is fold_in(rng, t · stages + s), so a rollout is a pure
    function of (params, rng, init ids) on a given machine. On several hosts every host calls this
    with its own pool and init ids; each decision that leads to a policy call (launch the next
    chunk, bootstrap values) is taken jointly, as the policy call is one program over all hosts.
    """
    stages = pool.cfg.num_stages
    rows = [pool.stage_envs(s) for s in range(stages)]
    n_envs = pool.num_envs
    t0 = time.perf_counter()
    obs = pool.reset(init_ids)
    timing = {"env": time.perf_counter() - t0, "infer": 0.0, "wait": 0.0}
    stage_obs = [_take(obs, r) for r in rows]
    if on_frame is not None:
        on_frame(obs, None, 0)
    steps: list[list] = [[None] * stages for _ in range(num_chunks)]
    host = {k: np.zeros((num_chunks, n_envs), dt) for k, dt in _HOST_FIELDS.items()}
    final_values = np.zeros((num_chunks, n_envs), np.float32)
    finished: dict[str, list] = {"success_once": [], "return": [], "length": [], "task": []}
    env_steps = 0
    counted = np.zeros(n_envs, bool)
    crashed = np.zeros(n_envs, bool)
    episode_start = np.zeros(n_envs, np.int64)  # the chunk each env's current episode began in

    def launch(t, s):
        t1 = time.perf_counter()
        dev, out, env_actions = actor.act(params, stage_obs[s], jax.random.fold_in(rng, t * stages + s))
        timing["infer"] += time.perf_counter() - t1
        steps[t][s] = (dev, out)
        pool.send_step(s, env_actions)

    inflight = [True] * stages
    for s in range(stages):
        launch(0, s)
    for t in range(num_chunks):
        if not any(inflight):
            break
        for s in range(stages):
            if not inflight[s]:
                continue
            t1 = time.perf_counter()
            res = pool.recv_step(s)
            timing["wait"] += time.perf_counter() - t1
            inflight[s] = False
            r = rows[s]
            valid_steps = res.valid & ~res.crashed[:, None]
            host["rewards"][t, r] = np.where(valid_steps, res.rewards, 0.0).sum(axis=1)
            host["dones"][t, r] = res.done | res.crashed
            host["truncated"][t, r] = res.truncated.any(axis=1) & ~res.terminated.any(axis=1)
            host["valid"][t, r] = valid_steps.any(axis=1) & ~res.crashed
            host["steps"][t, r] = valid_steps.sum(axis=1)
            env_steps += int(valid_steps.sum())
            for i in r[res.crashed]:
                # The episode's earlier chunks lose their ending: none of it enters the batch.
                host["valid"][episode_start[i] : t + 1, i] = False
            crashed[r] |= res.crashed
            # Without auto-reset a finished env keeps reporting done: count its episode once, and a
            # crashed one (whose replacement reports done) never.
            ended = (res.done | res.reset_now) & ~res.crashed & ~counted[r]
            counted[r] |= (ended | res.crashed) & ~res.reset_now
            episode_start[r[res.reset_now]] = t + 1
            for key, value in (
                ("success_once", res.success_once),
                ("return", res.episode_return),
                ("length", res.episode_length),
                ("task", init_ids[r, 0]),
            ):
                finished[key].append(value[ended])
            if sharding.any_host(res.final_obs is not None and res.reset_now.any()):
                # A host with no ended episode runs its current observations; they are masked out.
                final_obs = res.obs if res.final_obs is None else res.final_obs
                _, out_final, _ = actor.act(params, final_obs, jax.random.fold_in(rng, _VALUE_KEYS + t))
                final_values[t, r] = np.where(res.reset_now, sharding.local_rows(out_final.value), 0.0)
            stage_obs[s] = res.obs
            if t + 1 < num_chunks and (pool.cfg.auto_reset or sharding.any_host(not pool.done[r].all())):
                launch(t + 1, s)
                inflight[s] = True
        if on_frame is not None:
            on_frame(_concat_obs(stage_obs, rows), None, t + 1)
    # Chunks after every episode of a stage ended are never run; their slots repeat chunk 0's
    # (finite, well-formed inputs) and carry valid = False, so they weigh nothing in the update.
    for t in range(num_chunks):
        for s in range(stages):
            if steps[t][s] is None:
                steps[t][s] = steps[0][s]
    last_values = np.zeros(n_envs, np.float32)
    if pool.cfg.auto_reset:
        last_obs = _concat_obs(stage_obs, rows)
        _, out_last, _ = actor.act(params, last_obs, jax.random.fold_in(rng, _VALUE_KEYS + num_chunks))
        last_values = sharding.local_rows(out_last.value)
    order = np.argsort(np.concatenate(rows))
    per_step = [_merge_stages([steps[t][s] for s in range(stages)], order) for t in range(num_chunks)]
    dev, out = _stack(per_step)
    return Trajectory(
        inputs=dev,
        transitions=out.transitions,
        logp=out.logp,
        values=out.value,
        rewards=host["rewards"],
        dones=host["dones"],
        truncated=host["truncated"],
        valid=host["valid"],
        steps=host["steps"],
        final_values=final_values,
        last_values=last_values,
        episodes={k: np.concatenate(v) if v else np.zeros(0) for k, v in finished.items()},
        env_steps=env_steps,
        timing=timing | {"total": time.perf_counter() - t0},
        crashed=crashed,
    )


# Keys for value-only passes (bootstrap values), apart from the per-chunk sampling keys.
_VALUE_KEYS = 2**30

_HOST_FIELDS = {"rewards": np.float32, "dones": bool, "truncated": bool, "valid": bool, "steps": np.int32}


def _take(obs: base.BatchObs, rows: np.ndarray) -> base.BatchObs:
    return base.BatchObs(
        images={k: v[rows] for k, v in obs.images.items()},
        state=obs.state[rows],
        instruction=[obs.instruction[i] for i in rows],
    )


def _concat_obs(parts: list[base.BatchObs], rows: list[np.ndarray]) -> base.BatchObs:
    """Stage observations back in pool order."""
    order = np.argsort(np.concatenate(rows))
    images = {k: np.concatenate([p.images[k] for p in parts])[order] for k in parts[0].images}
    instr = [i for p in parts for i in p.instruction]
    return base.BatchObs(
        images=images,
        state=np.concatenate([p.state for p in parts])[order],
        instruction=[instr[i] for i in order],
    )


def _merge_stages(parts: list, order: np.ndarray):
    """Stage arrays (each host-major: every host's rows of that stage) → one host-major array of
    all envs in pool order."""
    if len(parts) == 1:
        return parts[0]
    hosts = jax.process_count()

    def merge(*xs):
        blocks = jnp.concatenate([x.reshape(hosts, -1, *x.shape[1:]) for x in xs], axis=1)[:, order]
        return blocks.reshape(-1, *blocks.shape[2:])

    return jax.tree.map(merge, *parts)


def run_episodes(
    pool,
    actor: Actor,
    params,
    rng: jax.Array,
    init_ids: np.ndarray,
    num_chunks: int,
    on_frame: Callable[[base.BatchObs, base.ChunkResult | None, int], None] | None = None,
    on_redo: Callable[[], None] | None = None,
    max_attempts: int = 3,
) -> dict[str, np.ndarray]:
    """Deterministic episodes (ODE sampling) for every (task, trial) row of ``init_ids``, in waves
    of ``pool.num_envs``; returns per-episode success_once, return, length, in input order.

    A wave in which a worker crashed is run again whole (``on_redo()`` first, e.g. to drop its
    video frames), with the same init ids and sampling keys, so every episode is scored from a
    complete run and equals what an uninterrupted evaluation gives; after ``max_attempts`` runs
    of one wave, WorkerError."""
    n = pool.num_envs
    out = {"success_once": [], "return": [], "length": []}
    for w, start in enumerate(range(0, len(init_ids), n)):
        wave = init_ids[start : start + n]
        ids = np.concatenate([wave, np.repeat(wave[-1:], n - len(wave), axis=0)])
        for attempt in range(1, max_attempts + 1):
            if not _run_wave(pool, actor, params, rng, ids, num_chunks, on_frame, w):
                break
            if attempt == max_attempts:
                raise pool_lib.WorkerError(
                    f"evaluation wave {w}: an env worker crashed in each of its {max_attempts} runs"
                )
            if on_redo is not None:
                on_redo()
        tracker = pool.tracker
        out["success_once"].append(tracker.success_once[: len(wave)].copy())
        out["return"].append(tracker.ret[: len(wave)].copy())
        out["length"].append(tracker.length[: len(wave)].copy())
    return {k: np.concatenate(v) for k, v in out.items()}


def _run_wave(pool, actor, params, rng, ids, num_chunks, on_frame, wave) -> bool:
    """One wave of deterministic episodes; whether a worker crashed in it (on any host)."""
    obs = pool.reset(ids)
    if on_frame is not None:
        on_frame(obs, None, 0)
    cut = np.zeros(pool.num_envs, bool)
    for t in range(num_chunks):
        live = ~pool.done
        key = jax.random.fold_in(rng, wave * num_chunks + t)
        _, _, env_actions = actor.act(params, obs, key, train=False)
        res = pool.step_chunk(env_actions)
        cut |= res.crashed
        obs = res.obs
        if on_frame is not None:
            on_frame(obs, res, t + 1)
        # Hosts stop together: the next policy call is one program over all of them.
        if not sharding.any_host(live.any() and not pool.done.all()):
            break
    return sharding.any_host(cut.any())
