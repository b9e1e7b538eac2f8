"""A SentencePiece model trained in-process, so tokenizer tests need no download."""

import io

import sentencepiece


def train(sentences: list[str], vocab_size: int) -> bytes:
    """Serialized model with PaliGemma's conventions: pad 0, eos 1, bos 2, unk 3, "\\n" as its own
    piece, no dummy prefix, identity normalization — so prompt layouts are exercised faithfully."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences * 20),
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
        minloglevel=2,
    )
    return model.getvalue()
