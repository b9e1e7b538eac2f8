"""Tokenizer tests on a tiny SentencePiece model trained here (no download)."""

import logging

import numpy as np
import pytest
import sentencepiece
import tiny_sentencepiece

from pirl.models import tokenizer as tok

_SENTENCES = [
    "pick up the red block and put it in the basket",
    "open the top drawer of the cabinet",
    "Task: put the bowl on the plate, State: 12 255 0 -1;\nAction: ",
    "turn on the stove and put the moka pot on it",
    "State: 0 1 2 3 4 5 6 7 8 9 10 128 255",
]


@pytest.fixture(scope="module")
def sp_proto() -> bytes:
    return tiny_sentencepiece.train(_SENTENCES, vocab_size=80)


@pytest.fixture(scope="module")
def raw(sp_proto):
    return sentencepiece.SentencePieceProcessor(model_proto=sp_proto)


@pytest.fixture(scope="module")
def tokenizer(sp_proto):
    return tok.PaligemmaTokenizer(model_proto=sp_proto)


def test_pi0_prompt_layout_padding_and_mask(tokenizer, raw):
    ids, mask = tokenizer.tokenize(["pick up the red block", "open the drawer"], max_len=40)
    assert ids.dtype == np.int32 and mask.dtype == bool and ids.shape == mask.shape == (2, 40)
    for row, text in enumerate(["pick up the red block", "open the drawer"]):
        # BOS (2), the text pieces, then the separate encoding of "\n" (the start-of-answer marker).
        expected = [2, *raw.encode(text), *raw.encode("\n")]
        n = len(expected)
        assert ids[row, :n].tolist() == expected
        assert (ids[row, n:] == 0).all()
        assert mask[row, :n].all() and not mask[row, n:].any()
    assert raw.encode("\n") == [raw.piece_to_id("\n")]


def test_prompt_cleaning(tokenizer):
    # Underscores and newlines become spaces; surrounding whitespace is stripped.
    assert tokenizer.encode_prompt("  pick_up the\nblock \n") == tokenizer.encode_prompt("pick up the block")


def test_discretize_state_bins():
    # Edges are -1 + 2k/256. -1.0 sits on edge 0 -> bin 0; 0.0 sits on edge 128 -> bin 128;
    # 0.999 >= edge 255 = 0.9921875 -> bin 255; 1.0 and 3.0 -> 255; -1.5 is below edge 0 -> -1;
    # -0.995 lies in [-1, -0.9921875) -> bin 0; -0.99 in [-0.9921875, -0.984375) -> bin 1;
    # -0.98 in [-0.984375, -0.9765625) -> bin 2.
    state = np.array([-1.0, 0.0, 0.999, 1.0, 3.0, -1.5, -0.995, -0.99, -0.98])
    assert tok.discretize_state(state).tolist() == [0, 128, 255, 255, 255, -1, 0, 1, 2]


def test_pi05_discrete_state_prompt(tokenizer, raw):
    state = np.array([[-1.0, 0.0, 1.0]], np.float32)
    ids, mask = tokenizer.tokenize(["put the_bowl on the plate"], max_len=120, state=state)
    n = int(mask.sum())
    expected = [2, *raw.encode("Task: put the bowl on the plate, State: 0 128 255;\nAction: ")]
    assert ids[0, :n].tolist() == expected
    assert tokenizer.decode(ids[0, 1:n]) == "Task: put the bowl on the plate, State: 0 128 255;\nAction: "


def test_truncation_warns_and_fills_mask(tokenizer, raw, caplog):
    text = "pick up the red block and put it in the basket"
    full = [2, *raw.encode(text), *raw.encode("\n")]
    with caplog.at_level(logging.WARNING, logger=tok.__name__):
        ids, mask = tokenizer.tokenize([text], max_len=5)
    assert ids[0].tolist() == full[:5] and mask.all()
    assert "truncated" in caplog.text and str(len(full)) in caplog.text


def test_bad_arguments(tokenizer):
    with pytest.raises(TypeError, match="single string"):
        tokenizer.tokenize("pick", max_len=8)
    with pytest.raises(ValueError, match="state has batch 2"):
        tokenizer.tokenize(["a"], max_len=8, state=np.zeros((2, 3)))


def test_loads_from_path_env_and_cache(sp_proto, tmp_path, monkeypatch):
    monkeypatch.delenv(tok.TOKENIZER_ENV, raising=False)
    path = tmp_path / "tok.model"
    path.write_bytes(sp_proto)
    assert tok.PaligemmaTokenizer(path).vocab_size == tok.PaligemmaTokenizer(model_proto=sp_proto).vocab_size
    monkeypatch.setenv(tok.TOKENIZER_ENV, str(path))
    assert tok.resolve_tokenizer_path() == path
    monkeypatch.delenv(tok.TOKENIZER_ENV)
    monkeypatch.setenv(tok.CACHE_ENV, str(tmp_path / "cache"))
    cached = tmp_path / "cache" / "paligemma_tokenizer.model"
    cached.parent.mkdir()
    cached.write_bytes(sp_proto)
    assert tok.resolve_tokenizer_path() == cached
    with pytest.raises(FileNotFoundError, match=r"not found: .*missing\.model"):
        tok.resolve_tokenizer_path(tmp_path / "missing.model")


def test_offline_error_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv(tok.TOKENIZER_ENV, raising=False)
    monkeypatch.setenv(tok.CACHE_ENV, str(tmp_path))

    def offline(url, dest):
        raise OSError("network unreachable")

    monkeypatch.setattr(tok, "_download", offline)
    with pytest.raises(FileNotFoundError) as info:
        tok.PaligemmaTokenizer()
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "paligemma_tokenizer.model") in message and tok.TOKENIZER_ENV in message
    assert not (tmp_path / "paligemma_tokenizer.model").exists()
