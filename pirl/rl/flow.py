"""π0's denoising as a stochastic policy: Flow-SDE and Flow-Noise steps, sampling, log-probs.

Time runs from t = 1 (noise) to t = 0 (action), openpi's convention: with K steps and Δ = 1/K,
step k (k = 0..K−1) takes x_k at t_k = 1 − k/K to x_{k+1} at t_k − Δ; x_0 ~ N(0, I), x_K is the
action chunk. Each step is Gaussian, x_{k+1} ~ N(mean_k, std_k²), so the log-prob of a stored
chain is exact and needs only the velocities at the stored points:
  one-step SDE (joint_logprob False): one step k* per sampling call is stochastic, the rest ODE;
    re-scoring costs one prefix pass plus ONE expert pass (at x_{k*}, t_{k*});
  joint (Flow-Noise default): every step stochastic; the log-prob is the mean of K + 1 terms
    (the N(0, I) prior of x_0 and the K transitions); re-scoring costs K expert passes.

Axis letters: B batch, K denoising steps, M stored chain points (2 one-step, K + 1 joint),
H model action horizon, A model action dim, C executed chunk, E env action dims.
"""

from __future__ import annotations

import dataclasses
import math

import flax.struct
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from pirl import ranges
from pirl.models import pi0
from pirl.rl import critic

NOISE_METHODS = ("sde", "noise")
LOGPROB_TYPES = ("chunk_level", "action_level", "token_level")
VALUE_SOURCES = ("none", "expert", "vlm")


@dataclasses.dataclass(frozen=True)
class FlowPolicyConfig:
    num_steps: int = 4  # K
    noise_method: str = "sde"  # "sde": σ_k = a·√(t/(1−t)); "noise": learned std head
    noise_level: float = 0.5  # a
    noise_logvar_range: tuple[float, float] = (0.08, 0.16)  # std bounds of the noise head
    joint_logprob: bool = False
    ignore_last: bool = False  # one-step SDE: never pick the last step as k*
    logprob_type: str = "chunk_level"
    num_action_chunks: int = 5  # C: executed (and scored) leading horizon steps
    action_env_dim: int = 7  # E: scored action dims
    value_source: str = "expert"  # "none" (GRPO), "expert" (π0), "vlm" (π0.5)
    value_hidden: tuple[int, ...] = (512, 256, 128)
    chunk_critic_input: bool = False  # pool only the executed-chunk action tokens
    detach_critic_input: bool = True

    def __post_init__(self):
        ranges.one_of(
            "policy", self, noise_method=NOISE_METHODS, logprob_type=LOGPROB_TYPES, value_source=VALUE_SOURCES
        )
        ranges.check(
            "policy",
            self,
            num_steps=">= 1",
            noise_level="> 0",
            noise_logvar_range="> 0",
            num_action_chunks=">= 1",
            action_env_dim=">= 1",
            value_hidden=">= 1",
        )
        if self.num_steps < 1 or (self.ignore_last and self.num_steps < 2):
            raise ValueError(f"num_steps={self.num_steps} leaves no step to make stochastic")
        lo, hi = self.noise_logvar_range
        if not 0 < lo < hi:
            raise ValueError(f"noise_logvar_range must be 0 < lo < hi, got {self.noise_logvar_range}")


@flax.struct.dataclass
class Transitions:
    """What re-scores a sample: chain points (x_{k*}, x_{k*+1}) and k*, or the whole chain."""

    chain: Float[Array, "B M H A"]
    k: Int[Array, " B"]


@flax.struct.dataclass
class PolicySample:
    actions: Float[Array, "B H A"]  # x_K, the model-space action chunk (unnormalize + slice outside)
    transitions: Transitions
    logp: Array  # [B] chunk_level, [B, C] action_level, [B, C, E] token_level
    value: Float[Array, " B"]  # expert critic: mean over the K steps; VLM critic: the prefix's


# ---------------------------------------------------------------- step formulas


def timesteps(num_steps: int) -> Float[Array, " K+1"]:
    """t_k = 1 − k/K for k = 0..K."""
    return 1.0 - jnp.arange(num_steps + 1, dtype=jnp.float32) / num_steps


def sde_sigmas(num_steps: int, noise_level: float) -> Float[Array, " K"]:
    """σ_k = a·√(t_k/(1 − t_k)); at t = 1 the denominator uses 1 − t_1, giving σ_0 = a·√K."""
    t = timesteps(num_steps)
    denom = jnp.where(t == 1.0, 1.0 - t[1], 1.0 - t)
    return noise_level * jnp.sqrt(t / denom)[:-1]


def step_mean_std(
    config: FlowPolicyConfig,
    x: Float[Array, "B H A"],
    v: Float[Array, "B H A"],
    k: Int[Array, " B"],
    stochastic: Array,
    learned_std: Float[Array, "B H A"] | None = None,
) -> tuple[Float[Array, "B H A"], Float[Array, "B H A"]]:
    """Mean and std of x_{k+1} given x_k and the velocity v at (x_k, t_k), per row.

    Rows where ``stochastic`` is False take the ODE step (std 0).
    """
    dt = 1.0 / config.num_steps
    t = timesteps(config.num_steps)[k][:, None, None]
    s = t - dt
    x0_hat = x - t * v
    x1_hat = x + (1.0 - t) * v
    ode_mean = (1.0 - s) * x0_hat + s * x1_hat
    if config.noise_method == "sde":
        sigma = sde_sigmas(config.num_steps, config.noise_level)[k][:, None, None]
        mean = (1.0 - s) * x0_hat + (s - sigma**2 * dt / (2.0 * t)) * x1_hat
        std = jnp.broadcast_to(math.sqrt(dt) * sigma, x.shape)
    else:
        if learned_std is None:
            raise ValueError("noise_method 'noise' needs the noise head's std")
        mean, std = ode_mean, learned_std
    stoch = jnp.reshape(stochastic, (-1, 1, 1))
    return jnp.where(stoch, mean, ode_mean), jnp.where(stoch, std, 0.0)


def gaussian_logpdf(x: Array, mean: Array, std: Array) -> Array:
    """Elementwise log N(x; mean, std²)."""
    return -jnp.log(std) - 0.5 * math.log(2.0 * math.pi) - 0.5 * jnp.square((x - mean) / std)


def gaussian_entropy(std: Array) -> Array:
    """Elementwise ½·log(2πe·σ²)."""
    return 0.5 * math.log(2.0 * math.pi * math.e) + jnp.log(std)


def executed(config: FlowPolicyConfig, x: Float[Array, "B ... H A"]) -> Float[Array, "B ... C E"]:
    """The executed chunk × env action dims of a per-element array."""
    return x[..., : config.num_action_chunks, : config.action_env_dim]


def reduce_logp(config: FlowPolicyConfig, logp: Float[Array, "B H A"]) -> Array:
    """Restricts to executed chunk × env dims, then sums per the logprob type:
    chunk_level → [B], action_level → [B, C], token_level → [B, C, E]."""
    lp = executed(config, logp)
    if config.logprob_type == "chunk_level":
        return lp.sum(axis=(-2, -1))
    if config.logprob_type == "action_level":
        return lp.sum(axis=-1)
    return lp


# ---------------------------------------------------------------- model-driven pieces


def _expert_step(model_config, params, obs, prefix, x, k, policy: FlowPolicyConfig):
    """One expert pass at (x, t_k): velocity, expert token outputs, and the learned std."""
    t = timesteps(policy.num_steps)[k]
    v, action_out = pi0.expert_pass(model_config, params["model"], obs, prefix, x, t)
    learned = None
    if policy.noise_method == "noise":
        learned = critic.noise_std(params["noise_head"], x.shape[-1], action_out, policy.noise_logvar_range)
    return v.astype(jnp.float32), action_out, learned


def _expert_value(policy: FlowPolicyConfig, params, action_out):
    tokens = action_out[:, : policy.num_action_chunks] if policy.chunk_critic_input else action_out
    return critic.value_from_tokens(
        params["value_head"], policy.value_hidden, tokens, detach=policy.detach_critic_input
    )


def _prefix_value(policy: FlowPolicyConfig, params, prefix, prompt_len: int):
    """The VLM critic on the mean prefix output over the present cameras' image tokens and every
    prompt position, padding included: the reference's value_vlm_mode "mean_token"
    (``get_value_from_vlm``: 256 tokens of each of the first num_images_in_input cameras and all
    max_token_len prompt slots). A padded slot's query has no valid key and attends uniformly to
    every position, here as in the reference, so a reference-trained critic sees its inputs."""
    mask = prefix.mask.at[:, -prompt_len:].set(True)
    return critic.value_from_tokens(
        params["value_head"], policy.value_hidden, prefix.out, mask, detach=policy.detach_critic_input
    )


def init_heads(policy: FlowPolicyConfig, model_config: pi0.Pi0Config, rng: jax.Array) -> dict:
    """Head params for this policy, sized from the model's widths; merge them into
    ``{"model": model_params}`` to get the RL param tree."""
    heads = {}
    r_value, r_noise = jax.random.split(rng)
    if policy.value_source != "none":
        width = model_config.action_expert.width if policy.value_source == "expert" else model_config.paligemma.width
        heads["value_head"] = critic.init_value_head(r_value, width, policy.value_hidden)
    if policy.noise_method == "noise":
        heads["noise_head"] = critic.init_noise_head(r_noise, model_config.action_expert.width, model_config.action_dim)
    return heads


def sample(policy: FlowPolicyConfig, model_config, params, obs, rng: jax.Array, *, train: bool = True) -> PolicySample:
    """Runs the K denoising steps from x_0 ~ N(0, I). ``train=False`` is the deterministic ODE
    (given x_0): no stochastic step, log-prob and value left at 0."""
    batch = obs.state.shape[0]
    shape = (batch, model_config.action_horizon, model_config.action_dim)
    r_x0, r_k, r_steps = jax.random.split(rng, 3)
    x = jax.random.normal(r_x0, shape, jnp.float32)
    kk = policy.num_steps
    if policy.joint_logprob:
        k_star = jnp.zeros((batch,), jnp.int32)
    else:
        # One k* per sampling call, shared by the batch, as the reference draws it.
        high = kk - 1 if policy.ignore_last else kk
        k_star = jnp.full((batch,), jax.random.randint(r_k, (), 0, high), jnp.int32)
    prefix = pi0.prefix_pass(model_config, params["model"], obs)

    def step(x, k):
        kvec = jnp.full((batch,), k, jnp.int32)
        stoch = jnp.full((batch,), train) & (policy.joint_logprob | (kvec == k_star))
        v, action_out, learned = _expert_step(model_config, params, obs, prefix, x, kvec, policy)
        mean, std = step_mean_std(policy, x, v, kvec, stoch, learned)
        x_next = mean + std * jax.random.normal(jax.random.fold_in(r_steps, k), shape, jnp.float32)
        # Same ops as re-scoring (`_score`); ODE rows get a dummy std of 1 and are never selected.
        logp = gaussian_logpdf(x_next, mean, jnp.where(stoch[:, None, None], std, 1.0))
        value = _expert_value(policy, params, action_out) if policy.value_source == "expert" else jnp.zeros(batch)
        return x_next, (x_next, logp, value)

    # A scan keeps one copy of the expert in the compiled program whatever K is.
    x_last, (xs, step_logps, step_values) = jax.lax.scan(step, x, jnp.arange(kk))
    chain = [x, x_last]
    zeros = jnp.zeros((batch,), jnp.float32)
    if not train:
        trans = Transitions(chain=jnp.stack(chain, axis=1), k=zeros.astype(jnp.int32))
        return PolicySample(actions=x_last, transitions=trans, logp=zeros, value=zeros)

    chain = jnp.concatenate([x[:, None], jnp.moveaxis(xs, 0, 1)], axis=1)  # [B, K+1, H, A]
    step_logps = jnp.moveaxis(step_logps, 0, 1)  # [B, K, H, A]
    if policy.joint_logprob:
        trans = Transitions(chain=chain, k=k_star)
        prior = gaussian_logpdf(chain[:, 0], 0.0, 1.0)
        logp_elem = jnp.concatenate([prior[:, None], step_logps], axis=1).mean(axis=1)
    else:
        pick = jax.vmap(lambda c, k: jax.lax.dynamic_slice_in_dim(c, k, 2, axis=0))
        trans = Transitions(chain=pick(chain, k_star), k=k_star)
        logp_elem = _select_step(step_logps, k_star)
    if policy.value_source == "expert":
        # The rollout value is the critic averaged over all K steps' expert outputs, one-step SDE
        # included (the reference's `_sample_actions_with_prefix_cache`); GAE, the returns and the
        # value-clip anchor use it, while re-scoring (`_score`) regresses the scored step's value.
        value = step_values.mean(axis=0)
    elif policy.value_source == "vlm":
        value = _prefix_value(policy, params, prefix, obs.tokenized_prompt.shape[1])
    else:
        value = zeros
    return PolicySample(actions=x_last, transitions=trans, logp=reduce_logp(policy, logp_elem), value=value)


def _select_step(x: Float[Array, "B K ..."], k: Int[Array, " B"]) -> Float[Array, "B ..."]:
    return jnp.take_along_axis(x, k.reshape((-1,) + (1,) * (x.ndim - 1)), axis=1)[:, 0]


def _score(policy: FlowPolicyConfig, model_config, params, obs, prefix, trans: Transitions):
    """(log-prob [reduced], per-sample entropy [B], value [B]) of stored transitions.

    The value is what the update regresses, as the reference's ``get_log_prob_value`` /
    ``default_forward``: one-step SDE the critic at the scored step k*, joint the mean over the K
    steps, VLM critic the prefix's."""
    batch = trans.chain.shape[0]
    yes = jnp.ones((batch,), bool)
    if policy.joint_logprob:

        def step(_, xs):
            k, x, x_next = xs
            kvec = jnp.full((batch,), k, jnp.int32)
            v, action_out, learned = _expert_step(model_config, params, obs, prefix, x, kvec, policy)
            mean, std = step_mean_std(policy, x, v, kvec, yes, learned)
            value = _expert_value(policy, params, action_out) if policy.value_source == "expert" else jnp.zeros(batch)
            return None, (gaussian_logpdf(x_next, mean, std), gaussian_entropy(std), value)

        points = jnp.moveaxis(trans.chain, 1, 0)  # [K+1, B, H, A]
        _, (lps, ents, values) = jax.lax.scan(step, None, (jnp.arange(policy.num_steps), points[:-1], points[1:]))
        x0 = trans.chain[:, 0]
        lps = jnp.concatenate([gaussian_logpdf(x0, 0.0, 1.0)[None], lps])  # [K+1, B, H, A]
        ents = jnp.concatenate([gaussian_entropy(jnp.ones_like(x0))[None], ents])
        logp_elem = lps.mean(axis=0)  # mean over the K + 1 terms
        entropy = executed(policy, ents).mean(axis=(0, 2, 3))
        value = values.mean(axis=0) if policy.value_source == "expert" else None
    else:
        x, x_next = trans.chain[:, 0], trans.chain[:, 1]
        v, action_out, learned = _expert_step(model_config, params, obs, prefix, x, trans.k, policy)
        mean, std = step_mean_std(policy, x, v, trans.k, yes, learned)
        logp_elem = gaussian_logpdf(x_next, mean, std)
        entropy = executed(policy, gaussian_entropy(std)).mean(axis=(1, 2))
        value = _expert_value(policy, params, action_out) if policy.value_source == "expert" else None
    if policy.value_source == "vlm":
        value = _prefix_value(policy, params, prefix, obs.tokenized_prompt.shape[1])
    if value is None:
        value = jnp.zeros((batch,), jnp.float32)
    return reduce_logp(policy, logp_elem), entropy, value


def score(
    policy: FlowPolicyConfig, model_config, params, obs, trans: Transitions, *, prefix_grad: bool = True
) -> tuple[Array, Float[Array, " B"], Float[Array, " B"]]:
    """Re-scores stored transitions under ``params``: (log-prob, entropy, value).

    One prefix pass, then one expert pass (one-step) or K (joint). ``prefix_grad=False`` (for
    train-expert-only) runs the prefix without gradients, so its backward pass is never built.
    """
    prefix = pi0.prefix_pass(model_config, params["model"], obs)
    if not prefix_grad:
        prefix = jax.lax.stop_gradient(prefix)
    return _score(policy, model_config, params, obs, prefix, trans)
