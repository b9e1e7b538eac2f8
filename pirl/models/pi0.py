"""π0 and π0.5: a PaliGemma VLM over images + prompt, and a flow-matching action expert.

Parameters are a plain nested dict whose paths are openpi's (`PaliGemma/llm/...`, `PaliGemma/img/...`,
`action_in_proj`, ...), so an openpi checkpoint restores into it without conversion. Every function
here is pure: `fn(config, params, ...)`, with `config` a frozen `Pi0Config` (static under jit).

Time convention (openpi's): t = 1 is pure noise, t = 0 is data; x_t = t·ε + (1 − t)·a, and the
network predicts the velocity u = ε − a, so sampling integrates from t = 1 down to t = 0.

Axis letters: B batch · S prefix tokens · T suffix tokens · A action dim (32) · Ha action horizon
D width (Dv of the VLM, De of the action expert) · L layers · K kv heads · H head dim.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.struct
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from pirl.models import gemma, siglip

IMAGE_KEYS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
# The vision tower runs all cameras in one pass below this many tokens, else one pass per camera.
# XLA's CPU backend (jax 0.10) compiles a SigLIP layer over 4096 or more tokens (16 images at 224²)
# into a different YNNPACK fusion plan (the LayerNorm fused into the next matmul): 24 images took
# 32 % longer in one pass than in two of 12 (So400m, float32, 2 cores); below it, fewer passes are
# faster, since each pass reads all of the tower's weights.
_JOINT_VISION_TOKENS = 4096


@dataclasses.dataclass(frozen=True)
class Pi0Config:
    """Architecture of π0 (`pi05=False`) or π0.5 (`pi05=True`).

    Variants are names (see `gemma.VARIANTS`, `siglip.VARIANTS`) or explicit configs.
    """

    pi05: bool = False
    paligemma_variant: str | gemma.GemmaConfig = "gemma_2b"
    action_expert_variant: str | gemma.GemmaConfig = "gemma_300m"
    vision_variant: str | siglip.SiglipConfig = "So400m/14"
    action_dim: int = 32
    action_horizon: int = 50
    # None → 48 for π0, 200 for π0.5 (whose prompt may carry the discretized state).
    max_token_len: int | None = None
    image_size: int = 224
    image_keys: tuple[str, ...] = IMAGE_KEYS
    vocab_size: int = gemma.PALIGEMMA_VOCAB_SIZE
    # Activations/matmul dtype; norms, softmax, logits and the SigLIP stem stay float32.
    dtype: str = "bfloat16"
    # Rematerialize every transformer block in the backward pass (no effect on values).
    remat: bool = True
    # Whether the tokenizer writes the discretized state into the prompt (None → pi05).
    discrete_state_input: bool | None = None

    def __post_init__(self):
        if self.max_token_len is None:
            object.__setattr__(self, "max_token_len", 200 if self.pi05 else 48)
        if self.discrete_state_input is None:
            object.__setattr__(self, "discrete_state_input", self.pi05)
        # Resolve names eagerly so a typo fails at construction.
        self.paligemma, self.action_expert, self.vision  # noqa: B018
        if self.image_size % self.vision.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch {self.vision.patch_size}")

    @property
    def paligemma(self) -> gemma.GemmaConfig:
        return gemma.get_gemma_config(self.paligemma_variant)

    @property
    def action_expert(self) -> gemma.GemmaConfig:
        return gemma.get_gemma_config(self.action_expert_variant)

    @property
    def vision(self) -> siglip.SiglipConfig:
        return siglip.get_siglip_config(self.vision_variant)

    @property
    def tokens_per_image(self) -> int:
        return (self.image_size // self.vision.patch_size) ** 2

    @property
    def prefix_len(self) -> int:
        return len(self.image_keys) * self.tokens_per_image + self.max_token_len

    @classmethod
    def tiny(cls, pi05: bool = False, **overrides) -> Pi0Config:
        """A model small enough for unit tests: 28×28 images (4 tokens each), width 32, depth 2."""
        kw = dict(
            pi05=pi05,
            paligemma_variant="tiny",
            action_expert_variant="tiny",
            vision_variant="tiny/14",
            image_size=28,
            vocab_size=1024,
            max_token_len=16,
            action_horizon=8,
            dtype="float32",
            remat=False,
        )
        return cls(**{**kw, **overrides})

    @classmethod
    def dummy(cls, pi05: bool = False, **overrides) -> Pi0Config:
        """openpi's `dummy` Gemma sizes (width 64, depth 4) for both experts, otherwise as `tiny`.

        openpi's own dummy keeps the full 400M-parameter SigLIP; this one uses big_vision's "mu".
        """
        kw = dict(paligemma_variant="dummy", action_expert_variant="dummy", vision_variant="mu/14")
        return cls.tiny(pi05, **{**kw, **overrides})


@flax.struct.dataclass
class Observation:
    """The model's input batch (after the data transforms).

    images: per camera key, float32 [B, I, I, 3] in [-1, 1] (or uint8 [0, 255]); image_masks: per key, bool [B]
    (False = camera absent; its pixels are ignored); state: float32 [B, A] (normalized, padded);
    tokenized_prompt: int32 [B, Lp], right-padded; tokenized_prompt_mask: bool [B, Lp].
    """

    images: dict[str, Float[Array, "B I I 3"]]
    image_masks: dict[str, Bool[Array, " B"]]
    state: Float[Array, "B A"]
    tokenized_prompt: Int[Array, "B Lp"]
    tokenized_prompt_mask: Bool[Array, "B Lp"]


@flax.struct.dataclass
class Prefix:
    """What the action expert needs from one prefix pass.

    kv_cache: (K, V) each [L, B, S, Kh, H]; mask: bool [B, S] (valid prefix tokens);
    out: [B, S, Dv] final-normed VLM outputs (for a value head on the VLM).
    """

    kv_cache: gemma.KVCache
    mask: Bool[Array, "B S"]
    out: Float[Array, "B S Dv"]


def _llm(config: Pi0Config) -> gemma.Gemma:
    return gemma.Gemma(
        configs=(config.paligemma, config.action_expert),
        vocab_size=config.vocab_size,
        dtype=config.dtype,
        remat=config.remat,
    )


def _img(config: Pi0Config) -> siglip.Siglip:
    return siglip.Siglip(config.vision, out_width=config.paligemma.width, dtype=config.dtype, remat=config.remat)


def _linear(p: dict, x: jax.Array) -> jax.Array:
    # Same promotion as the checkpoints' Linear layers: bfloat16 activations × float32 kernels → float32.
    return jnp.dot(x, p["kernel"]) + p["bias"]


def _init_linear(rng: jax.Array, d_in: int, d_out: int) -> dict:
    return {"kernel": jax.nn.initializers.lecun_normal()(rng, (d_in, d_out)), "bias": jnp.zeros((d_out,))}


def init_params(config: Pi0Config, rng: jax.Array) -> dict:
    """Fresh parameters (float32) in openpi's tree layout."""
    k_llm, k_img, *k = jax.random.split(rng, 7)
    a, de = config.action_dim, config.action_expert.width
    llm = _llm(config).init(k_llm, use_adarms=(False, config.pi05), method=gemma.Gemma.init_all)["params"]
    img = _img(config).init(k_img, jnp.zeros((1, config.image_size, config.image_size, 3)))["params"]
    params = {
        "PaliGemma": {"llm": llm, "img": img},
        "action_in_proj": _init_linear(k[0], a, de),
        "action_out_proj": _init_linear(k[1], de, a),
    }
    if config.pi05:
        params["time_mlp_in"] = _init_linear(k[2], de, de)
        params["time_mlp_out"] = _init_linear(k[3], de, de)
    else:
        params["state_proj"] = _init_linear(k[2], a, de)
        params["action_time_mlp_in"] = _init_linear(k[3], 2 * de, de)
        params["action_time_mlp_out"] = _init_linear(k[4], de, de)
    return params


def param_shapes(config: Pi0Config) -> dict:
    """The parameter tree as `jax.ShapeDtypeStruct`s, without allocating anything."""
    return jax.eval_shape(functools.partial(init_params, config), jax.random.key(0))


def count_params(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def fake_observation(config: Pi0Config, batch_size: int = 1, rng: jax.Array | None = None) -> Observation:
    """A valid observation: random images/state/prompt when `rng` is given, else ones (openpi's fake_obs)."""
    b, s, lp = batch_size, config.image_size, config.max_token_len
    if rng is None:
        images = {k: jnp.ones((b, s, s, 3)) for k in config.image_keys}
        state = jnp.ones((b, config.action_dim))
        prompt = jnp.ones((b, lp), jnp.int32)
    else:
        k_img, k_state, k_tok = jax.random.split(rng, 3)
        keys = jax.random.split(k_img, len(config.image_keys))
        images = {
            n: jax.random.uniform(kk, (b, s, s, 3), minval=-1, maxval=1)
            for n, kk in zip(config.image_keys, keys, strict=True)
        }
        state = jax.random.normal(k_state, (b, config.action_dim))
        prompt = jax.random.randint(k_tok, (b, lp), 1, config.vocab_size)
    return Observation(
        images=images,
        image_masks={k: jnp.ones((b,), bool) for k in config.image_keys},
        state=state,
        tokenized_prompt=prompt,
        tokenized_prompt_mask=jnp.ones((b, lp), bool),
    )


def make_attn_mask(input_mask: Bool[Array, "B N"], ar_mask: Bool[Array, "*B N"]) -> Bool[Array, "B N N"]:
    """Token i attends to token j iff cumsum(ar)[j] ≤ cumsum(ar)[i] and both are valid.

    `ar_mask` is True where a new causal block starts: all-False is full attention, all-True causal.
    """
    ar = jnp.broadcast_to(ar_mask, input_mask.shape)
    c = jnp.cumsum(ar, axis=1)
    return (c[:, None, :] <= c[:, :, None]) & input_mask[:, None, :] & input_mask[:, :, None]


def posemb_sincos(t: Float[Array, " B"], dim: int, min_period: float = 4e-3, max_period: float = 4.0):
    """Sine-cosine embedding of scalars in [0, 1]: [sin(2πt/p) ‖ cos(2πt/p)], periods geometric in [min, max]."""
    fraction = jnp.linspace(0.0, 1.0, dim // 2)
    period = min_period * (max_period / min_period) ** fraction
    # (1 / period) · 2π, in this order: at t = 1 the fastest frequency gives arguments near 1600,
    # where a one-ulp difference in the frequency moves sin/cos by ~1e-4.
    x = jnp.einsum("i,j->ij", t, 1.0 / period * 2 * jnp.pi, precision=jax.lax.Precision.HIGHEST)
    return jnp.concatenate([jnp.sin(x), jnp.cos(x)], axis=-1)


def _check_observation(config: Pi0Config, obs: Observation) -> None:
    for key in config.image_keys:
        if key not in obs.images or key not in obs.image_masks:
            raise KeyError(
                f"observation lacks camera {key!r} (images: {sorted(obs.images)}); absent cameras "
                "must be given as zeros with image_masks[key] = False"
            )
        shape = obs.images[key].shape
        if shape[1:] != (config.image_size, config.image_size, 3):
            raise ValueError(
                f"image {key!r} has shape {shape}; the model expects [B, {config.image_size}, "
                f"{config.image_size}, 3] (resize with pad first)"
            )
    if obs.state.shape[-1] != config.action_dim:
        raise ValueError(f"state has shape {obs.state.shape}; expected [B, {config.action_dim}] (pad the state)")


def _float_image(x: Array) -> Float[Array, "B I I 3"]:
    """uint8 images (as rollout buffers keep them, 4× smaller) map to [-1, 1] as x / 255 · 2 − 1."""
    return x.astype(jnp.float32) / 255.0 * 2.0 - 1.0 if x.dtype == jnp.uint8 else x


def embed_prefix(config: Pi0Config, params: dict, obs: Observation):
    """Image tokens of every camera, then the prompt's token embeddings.

    Returns tokens [B, S, Dv], input mask bool [B, S] and ar mask bool [S] (all False: the prefix is
    one bidirectional block).
    """
    _check_observation(config, obs)
    b = obs.state.shape[0]
    images = [_float_image(obs.images[k]) for k in config.image_keys]

    def tower(x: Float[Array, "N I I 3"]) -> Float[Array, "N P Dv"]:
        return _img(config).apply({"params": params["PaliGemma"]["img"]}, x)

    if len(images) * b * config.tokens_per_image < _JOINT_VISION_TOKENS:
        # One pass over every camera reads the tower's weights once (what small batches wait on).
        img_tokens = tower(jnp.concatenate(images, axis=0))
        img_tokens = list(img_tokens.reshape(len(images), b, *img_tokens.shape[1:]))
    else:
        # One pass per camera (openpi's order); each pass keeps the batch's sharding.
        img_tokens = [tower(x) for x in images]
    p = img_tokens[0].shape[1]
    text = _llm(config).apply({"params": params["PaliGemma"]["llm"]}, obs.tokenized_prompt, method=gemma.Gemma.embed)
    tokens = jnp.concatenate([*img_tokens, text], axis=1)
    masks = [jnp.broadcast_to(obs.image_masks[k][:, None], (b, p)) for k in config.image_keys]
    input_mask = jnp.concatenate([*masks, obs.tokenized_prompt_mask], axis=1)
    ar_mask = jnp.zeros((tokens.shape[1],), bool)
    return tokens, input_mask, ar_mask


def embed_suffix(config: Pi0Config, params: dict, obs: Observation, x_t: Float[Array, "B Ha A"], t: Float[Array, " B"]):
    """Suffix tokens for the action expert, their masks, and the adaRMS condition (π0.5) or None.

    π0: [state token, Ha action tokens], ar mask [1, 1, 0, …]; the action tokens carry the time
    through an MLP on [action ‖ time embedding]. π0.5: Ha action tokens, ar mask [1, 0, …]; time
    goes through `time_mlp_*` into every adaptive norm of the expert.
    """
    b, ha = x_t.shape[:2]
    de = config.action_expert.width
    action_tokens = _linear(params["action_in_proj"], x_t)
    time_emb = posemb_sincos(t, de)
    if config.pi05:
        cond = jax.nn.swish(_linear(params["time_mlp_in"], time_emb))
        cond = jax.nn.swish(_linear(params["time_mlp_out"], cond))
        tokens, ar = action_tokens, [True] + [False] * (ha - 1)
    else:
        cond = None
        state_token = _linear(params["state_proj"], obs.state)[:, None, :]
        time_tokens = jnp.broadcast_to(time_emb[:, None, :], (b, ha, de))
        h = _linear(params["action_time_mlp_in"], jnp.concatenate([action_tokens, time_tokens], axis=-1))
        h = _linear(params["action_time_mlp_out"], jax.nn.swish(h))
        tokens, ar = jnp.concatenate([state_token, h], axis=1), [True, True] + [False] * (ha - 1)
    return tokens, jnp.ones(tokens.shape[:2], bool), jnp.asarray(ar), cond


def prefix_pass(config: Pi0Config, params: dict, obs: Observation) -> Prefix:
    """Runs the VLM over images + prompt once; the KV cache serves every later expert pass."""
    tokens, mask, ar = embed_prefix(config, params, obs)
    positions = jnp.cumsum(mask, axis=1) - 1  # padding takes no position
    (out, _), kv = _llm(config).apply(
        {"params": params["PaliGemma"]["llm"]}, [tokens, None], positions, make_attn_mask(mask, ar)
    )
    return Prefix(kv_cache=kv, mask=mask, out=out)


def expert_pass(
    config: Pi0Config,
    params: dict,
    obs: Observation,
    prefix: Prefix,
    x_t: Float[Array, "B Ha A"],
    t: Float[Array, " B"],
) -> tuple[Float[Array, "B Ha A"], Float[Array, "B Ha De"]]:
    """One action-expert pass at (x_t, t) against the cached prefix.

    Returns the velocity v_t (float32) and the expert's final-normed outputs at the action tokens.
    """
    tokens, mask, ar, cond = embed_suffix(config, params, obs, x_t, t)
    b, tn = mask.shape
    prefix_attn = jnp.broadcast_to(prefix.mask[:, None, :], (b, tn, prefix.mask.shape[1]))
    attn = jnp.concatenate([prefix_attn, make_attn_mask(mask, ar)], axis=-1)
    positions = jnp.sum(prefix.mask, axis=-1)[:, None] + jnp.cumsum(mask, axis=-1) - 1
    (_, out), _ = _llm(config).apply(
        {"params": params["PaliGemma"]["llm"]},
        [None, tokens],
        positions,
        attn,
        conds=[None, cond],
        kv_cache=prefix.kv_cache,
    )
    action_out = out[:, -x_t.shape[1] :]
    return _linear(params["action_out_proj"], action_out), action_out


def sample_actions(
    config: Pi0Config,
    params: dict,
    obs: Observation,
    noise: Float[Array, "B Ha A"],
    num_steps: int = 10,
) -> Float[Array, "B Ha A"]:
    """Deterministic Euler integration of the flow from x_1 = `noise` (t = 1) to t = 0 in `num_steps` steps.

    The prefix runs once; each step is one expert pass. Time accumulates in float32 (t ← t + dt),
    so t takes exactly the values openpi's sampler visits.
    """
    prefix = prefix_pass(config, params, obs)
    dt = -1.0 / num_steps
    b = noise.shape[0]

    def step(carry, _):
        x, t = carry
        v, _ = expert_pass(config, params, obs, prefix, x, jnp.broadcast_to(t, (b,)))
        return (x + dt * v, t + dt), None

    (x0, _), _ = jax.lax.scan(step, (noise.astype(jnp.float32), jnp.float32(1.0)), length=num_steps)
    return x0


def flow_loss_at(
    config: Pi0Config,
    params: dict,
    obs: Observation,
    actions: Float[Array, "B Ha A"],
    noise: Float[Array, "B Ha A"],
    t: Float[Array, " B"],
) -> Float[Array, "B Ha"]:
    """Flow-matching loss for given noise and time: mean over A of (v(x_t, t) − (ε − a))²."""
    tt = t[:, None, None]
    x_t = tt * noise + (1 - tt) * actions
    p_tokens, p_mask, p_ar = embed_prefix(config, params, obs)
    s_tokens, s_mask, s_ar, cond = embed_suffix(config, params, obs, x_t, t)
    mask = jnp.concatenate([p_mask, s_mask], axis=1)
    ar = jnp.concatenate([p_ar, s_ar])
    (_, out), _ = _llm(config).apply(
        {"params": params["PaliGemma"]["llm"]},
        [p_tokens, s_tokens],
        jnp.cumsum(mask, axis=1) - 1,
        make_attn_mask(mask, ar),
        conds=[None, cond],
    )
    v = _linear(params["action_out_proj"], out[:, -actions.shape[1] :])
    return jnp.mean(jnp.square(v - (noise - actions)), axis=-1)


def flow_loss(
    config: Pi0Config, params: dict, obs: Observation, actions: Float[Array, "B Ha A"], rng: jax.Array
) -> Float[Array, "B Ha"]:
    """SFT loss with ε ~ N(0, I) and t = 0.001 + 0.999·Beta(1.5, 1) (more weight near the noise end)."""
    k_noise, k_time = jax.random.split(rng)
    noise = jax.random.normal(k_noise, actions.shape)
    t = jax.random.beta(k_time, 1.5, 1.0, actions.shape[:1]) * 0.999 + 0.001
    return flow_loss_at(config, params, obs, actions, noise, t)
