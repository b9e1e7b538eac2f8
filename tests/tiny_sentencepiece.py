"""A SentencePiece model trained in-process, so tokenizer tests need no download."""

from pirl.models import tokenizer


def train(sentences: list[str], vocab_size: int) -> bytes:
    return tokenizer.train_sentencepiece(sentences, vocab_size)
