"""The vectorised text hasher (catalogue pages, training tables) and the per-request Python path must give
the same ids bit for bit: every checkpoint's title and query embeddings are indexed by them."""

import random
import zlib

import numpy as np
import pytest

from monorec.data import text_hashing
from monorec.data.text_hashing import hash_texts, tokenize


def reference(values, buckets, max_tokens):
    """The definition, token by token: crc32 of each of tokenize()'s first max_tokens tokens."""
    out = np.zeros((len(values), max_tokens), dtype=np.int64)
    for i, v in enumerate(values):
        ids = [1 + zlib.crc32(t.encode()) % (buckets - 1) for t in tokenize(v or "")[:max_tokens]]
        out[i, : len(ids)] = ids
    return out


def random_texts(seed: int, n: int) -> list[str | None]:
    # ASCII, punctuation, Latin with accents, Greek sigmas, letters whose lowercase is (or contains) ASCII
    # (KELVIN SIGN -> k, DOTTED CAPITAL I -> i + combining dot), titlecase digraphs, CJK, emoji
    alphabet = "abcXYZ019 ,.!-'#_\t\nİKẞéÉΣσςǄǅǆ中文🙂"
    rng = random.Random(seed)
    texts: list[str | None] = []
    for _ in range(n):
        roll = rng.random()
        if roll < 0.05:
            texts.append(None)
        elif roll < 0.1:
            texts.append("")
        else:
            texts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80))))
    return [*texts, "a" * 400, "Robot Nebula Of", "   ", "!!!", "Ωmega Σ 42"]


@pytest.mark.parametrize("max_tokens", [1, 6, 24, 64])
def test_vectorised_path_equals_the_definition(max_tokens):
    texts = random_texts(seed=max_tokens, n=3000)
    expected = reference(texts, 1000, max_tokens)
    assert (text_hashing._hash_texts_vectorised(texts, 1000, max_tokens) == expected).all()
    assert (hash_texts(texts, 1000, max_tokens) == expected).all()  # the public entry picks the batch path
    assert (hash_texts(texts[:10], 1000, max_tokens) == expected[:10]).all()  # and the per-text one


def test_vectorised_path_on_texts_without_words():
    texts = [None, "", "...", "中文"] * 20
    assert (hash_texts(texts, 1000, 8) == 0).all()


def test_crc32_matches_zlib_on_every_length():
    rng = np.random.default_rng(0)
    buffer = rng.integers(0, 256, 5000, dtype=np.uint8)
    starts = rng.integers(0, 4000, 500)
    lengths = rng.integers(0, 600, 500)
    got = text_hashing._crc32(buffer, starts, lengths)
    want = [zlib.crc32(buffer[s : s + n].tobytes()) for s, n in zip(starts, lengths, strict=True)]
    assert got.tolist() == want
