"""PaliGemma SentencePiece tokenizer and the π0 / π0.5 prompt formats.

Host-side (numpy only, no JAX): prompts are tokenized once per observation batch before the
batch crosses to the device.

Axis letters: B batch, L prompt tokens (max_len), S state dims (unpadded).

Prompt formats (token ids from PaliGemma's SentencePiece model, BOS = 2, pad = 0):
  π0:   BOS + encode(clean(text)) + encode("\\n")      ("\\n" marks the start of the answer)
  π0.5: BOS + encode(f"Task: {clean(text)}, State: {bins};\\nAction: ")
where clean() strips and turns "_" and "\\n" into spaces, and bins are the normalized state's
256-bin indices separated by spaces.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import pathlib
import shutil
import tempfile
import urllib.request
from collections.abc import Sequence

import numpy as np
import sentencepiece
from jaxtyping import Bool, Float, Int

logger = logging.getLogger(__name__)

TOKENIZER_URL = "gs://big_vision/paligemma_tokenizer.model"
# The bucket is public; plain HTTPS avoids needing a GCS client just for one file.
_TOKENIZER_HTTPS = "https://storage.googleapis.com/big_vision/paligemma_tokenizer.model"
TOKENIZER_ENV = "PIRL_PALIGEMMA_TOKENIZER"
CACHE_ENV = "PIRL_CACHE"
NUM_STATE_BINS = 256


def default_cache_dir() -> pathlib.Path:
    """Where downloads are cached: $PIRL_CACHE or ~/.cache/pirl."""
    return pathlib.Path(os.environ.get(CACHE_ENV, pathlib.Path.home() / ".cache" / "pirl"))


def _download(url: str, dest: pathlib.Path) -> None:
    """Downloads `url` to `dest` atomically (a partial file never lands at `dest`)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with (
        urllib.request.urlopen(url, timeout=30) as response,
        tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as tmp,
    ):
        shutil.copyfileobj(response, tmp)
    os.replace(tmp.name, dest)


def resolve_tokenizer_path(path: str | os.PathLike | None = None) -> pathlib.Path:
    """Finds the PaliGemma tokenizer file: `path`, else $PIRL_PALIGEMMA_TOKENIZER, else the cache.

    A missing cached copy is downloaded from the public big_vision bucket; when that fails
    (offline) a one-line FileNotFoundError says where the file is expected and how to provide it.
    """
    explicit = path if path is not None else os.environ.get(TOKENIZER_ENV)
    if explicit:
        explicit = pathlib.Path(explicit).expanduser()
        if not explicit.is_file():
            raise FileNotFoundError(f"PaliGemma tokenizer file not found: {explicit}")
        return explicit
    cached = default_cache_dir() / "paligemma_tokenizer.model"
    if cached.is_file():
        return cached
    try:
        logger.info("Downloading %s to %s", TOKENIZER_URL, cached)
        _download(_TOKENIZER_HTTPS, cached)
    except OSError as e:
        raise FileNotFoundError(
            f"PaliGemma tokenizer not at {cached} and downloading {TOKENIZER_URL} failed ({e}); copy "
            f"paligemma_tokenizer.model there, or set {TOKENIZER_ENV}=/path/to/paligemma_tokenizer.model"
        ) from None
    return cached


def clean_text(text: str) -> str:
    """openpi's prompt cleaning: strip, then '_' and newlines become spaces."""
    return text.strip().replace("_", " ").replace("\n", " ")


def discretize_state(state: Float[np.ndarray, "*b S"]) -> Int[np.ndarray, "*b S"]:
    """Bins a state normalized to [-1, 1] into 256 bins of width 2/256: bin k covers
    [-1 + 2k/256, -1 + 2(k+1)/256), and everything at or above the last edge is 255.

    Values below -1 give -1, as openpi's digitize does; the models were trained on exactly these
    strings, so no clamping.
    """
    edges = np.linspace(-1.0, 1.0, NUM_STATE_BINS + 1)[:-1]
    return np.digitize(np.asarray(state), bins=edges) - 1


class PaligemmaTokenizer:
    """SentencePiece tokenizer producing π0 / π0.5 prompts, right-padded to a fixed length."""

    def __init__(self, path: str | os.PathLike | None = None, *, model_proto: bytes | None = None):
        """Loads from `model_proto` bytes if given, else from resolve_tokenizer_path(path)."""
        if model_proto is None:
            model_proto = resolve_tokenizer_path(path).read_bytes()
        self._sp = sentencepiece.SentencePieceProcessor(model_proto=model_proto)

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode_prompt(self, text: str, state: Float[np.ndarray, " S"] | None = None) -> list[int]:
        """Token ids (unpadded) of one prompt; `state` (normalized, unpadded) selects the π0.5 format."""
        cleaned = clean_text(text)
        if state is None:
            return self._sp.encode(cleaned, add_bos=True) + self._sp.encode("\n")
        bins = " ".join(str(int(b)) for b in discretize_state(np.asarray(state).reshape(-1)))
        return self._sp.encode(f"Task: {cleaned}, State: {bins};\nAction: ", add_bos=True)

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def tokenize(
        self,
        prompts: Sequence[str],
        max_len: int,
        state: Float[np.ndarray, "B S"] | None = None,
    ) -> tuple[Int[np.ndarray, "B L"], Bool[np.ndarray, "B L"]]:
        """Tokenizes a batch of prompts, right-padded with 0 to `max_len`; longer ones are truncated
        with a warning. Returns (ids int32 [B, L], mask bool [B, L], True on real tokens)."""
        if isinstance(prompts, str):
            raise TypeError("tokenize expects a sequence of prompts, got a single string")
        if state is not None and len(state) != len(prompts):
            raise ValueError(f"state has batch {len(state)} but there are {len(prompts)} prompts")
        ids = np.zeros((len(prompts), max_len), np.int32)
        mask = np.zeros((len(prompts), max_len), bool)
        for i, text in enumerate(prompts):
            tokens = self.encode_prompt(text, None if state is None else state[i])
            if len(tokens) > max_len:
                logger.warning(
                    "Prompt %d has %d tokens, more than max_token_len=%d: truncated (raise max_token_len "
                    "if this happens often)",
                    i,
                    len(tokens),
                    max_len,
                )
                tokens = tokens[:max_len]
            ids[i, : len(tokens)] = tokens
            mask[i, : len(tokens)] = True
        return ids, mask


def train_sentencepiece(sentences: Sequence[str], vocab_size: int, *, byte_fallback: bool = False) -> bytes:
    """A SentencePiece model trained in-process with PaliGemma's conventions: pad 0, eos 1, bos 2,
    unk 3, "\\n" as its own piece, no dummy prefix, identity normalization. For small models and
    offline runs; real checkpoints need the PaliGemma tokenizer they were trained with."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(list(sentences) * 20),
        model_writer=model,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        user_defined_symbols=["\n"],
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        byte_fallback=byte_fallback,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


# Words of robot-manipulation instructions; with byte fallback any other text still encodes.
_EMBEDDED_CORPUS = (
    "pick up the red block and place it on the plate",
    "put the black bowl in the top drawer of the wooden cabinet and close it",
    "open the middle drawer of the cabinet",
    "push the puck to the goal, reach the goal position over the wall",
    "press the button on the coffee machine from the top",
    "slide the plate into the goal and pull the handle up from the side",
    "turn on the stove and put the moka pot on it",
    "insert the peg into the hole sideways; rotate the faucet handle",
    "sweep the cube into the bin next to the basket",
    # MetaWorld's task descriptions as the reference words them (pirl.envs.metaworld.INSTRUCTIONS).
    "Unlock the door by rotating the lock counter-clockwise; Grasp a stick and push a box using it",
    "Bypass a wall and press a button; Pick and place a puck onto a shelf; Dunk the basketball",
    "Task: , State: 0 1 2 3 4 5 6 7 8 9 128 255;\nAction: ",
)


@functools.cache
def embedded_tokenizer_proto(vocab_size: int = 512) -> bytes:
    """A small tokenizer that needs no download (for tiny models: vocab_size must not exceed the
    model's vocabulary). Training is deterministic, so every process builds the same model."""
    return train_sentencepiece(_EMBEDDED_CORPUS, vocab_size, byte_fallback=True)


def load_tokenizer(name: str, vocab_size: int) -> PaligemmaTokenizer:
    """ "paligemma" (the real one, downloaded once), "embedded" (built in-process), or a .model path."""
    if name == "embedded":
        return PaligemmaTokenizer(model_proto=embedded_tokenizer_proto(min(vocab_size, 512)))
    return PaligemmaTokenizer(None if name == "paligemma" else name)
