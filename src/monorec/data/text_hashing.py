"""Text -> hashed token ids: the one tokenizer of queries and titles, with a vectorised path for batches.

Tokens are the lowercase words (``[a-z0-9]+``) of a text, then the character trigrams of each word padded
as ``#word#``, in order of appearance; each token is hashed with crc32 (stable across processes and
versions: Python's ``hash`` is salted, polars' changes between releases) into ``1 .. buckets - 1``; 0 is
padding. Checkpoints depend on these ids, so the two paths below must agree bit for bit
(``tests/test_text_hashing.py`` checks them against each other on random Unicode).

- A few texts (a request): :func:`tokenize` in Python, memoised per text.
- Many texts (a catalogue page, a training table): words extracted by polars, the crc32 of every word and
  trigram computed byte position by byte position over all tokens at once with a table in numpy.
  Featurizing 1M titles this way is what bulk re-embedding (B9) needed.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable
from functools import lru_cache

import numpy as np
import polars as pl

__all__ = ["hash_texts", "tokenize"]

_WORD = re.compile(r"[a-z0-9]+")
_VECTORISE_FROM = 64  # below this many texts the Python path is faster (a polars call costs ~100 us)


def tokenize(text: str) -> list[str]:
    """Words, then character trigrams of each word (``#word#`` padded), in order of appearance."""
    words = _WORD.findall(text.lower())
    grams = [w[i : i + 3] for w in (f"#{w}#" for w in words) for i in range(len(w) - 2)]
    return words + grams


@lru_cache(maxsize=200_000)
def _hash_text(text: str, buckets: int, max_tokens: int) -> tuple[int, ...]:
    return tuple(1 + zlib.crc32(t.encode()) % (buckets - 1) for t in tokenize(text)[:max_tokens])


def hash_texts(values: Iterable[str | None], buckets: int, max_tokens: int) -> np.ndarray:
    """(N,) texts -> (N, max_tokens) int64 bucket ids, 0-padded; None/empty -> all padding."""
    values = list(values)
    if len(values) >= _VECTORISE_FROM:
        return _hash_texts_vectorised(values, buckets, max_tokens)
    out = np.zeros((len(values), max_tokens), dtype=np.int64)
    for i, v in enumerate(values):
        if v:
            ids = _hash_text(v, buckets, max_tokens)
            out[i, : len(ids)] = ids
    return out


def _crc32_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):  # the reflected polynomial of zlib's crc32
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0xEDB88320), table >> 1).astype(np.uint32)
    return table


_CRC_TABLE = _crc32_table()


def _crc32(buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """crc32 of the byte strings ``buffer[starts[i] : starts[i] + lengths[i]]`` -> (T,) uint32, all at once:
    one table step per byte position, over the tokens still that long (longest first, so a prefix)."""
    uniform = len(lengths) == 0 or lengths.min() == lengths.max()
    order = None if uniform else np.argsort(-lengths, kind="stable")
    if order is not None:
        starts, lengths = starts[order], lengths[order]
    crc = np.full(len(starts), 0xFFFFFFFF, dtype=np.uint32)
    longer = np.searchsorted(-lengths, -np.arange(1, int(lengths.max(initial=0)) + 1), side="right")
    for position, count in enumerate(longer):  # count = tokens with more than `position` bytes
        c = crc[:count]
        crc[:count] = _CRC_TABLE[(c ^ buffer[starts[:count] + position]) & 0xFF] ^ (c >> 8)
    crc ^= np.uint32(0xFFFFFFFF)
    if order is None:
        return crc
    out = np.empty_like(crc)
    out[order] = crc
    return out


def _hash_texts_vectorised(values: list[str | None], buckets: int, max_tokens: int) -> np.ndarray:
    n = len(values)
    out = np.zeros((n, max_tokens), dtype=np.int64)
    words = pl.Series("t", values, dtype=pl.String).str.to_lowercase().str.extract_all(r"[a-z0-9]+")
    per_row = words.list.len().fill_null(0).to_numpy().astype(np.int64)
    flat = words.explode().drop_nulls()
    if flat.len() == 0:
        return out
    word_len = flat.str.len_bytes().to_numpy().astype(np.int64)
    # every word padded as "#word#", back to back in one ASCII buffer (the words are [a-z0-9] only)
    joined = flat.str.join("##").item()
    buffer = np.frombuffer(f"#{joined}#".encode("ascii"), dtype=np.uint8)
    padded_start = np.concatenate(([0], np.cumsum(word_len + 2)[:-1]))
    row = np.repeat(np.arange(n), per_row)

    # a row's tokens: its words first, then each word's trigrams (a word of L letters has L) in order
    row_first_word = np.concatenate(([0], np.cumsum(per_row)[:-1]))
    word_pos = np.arange(len(flat)) - row_first_word[row]
    grams_before = np.cumsum(word_len) - word_len  # trigrams of the earlier words, over all rows
    first_gram_pos = per_row[row] + grams_before - grams_before[row_first_word[row]]
    kept_grams = np.clip(max_tokens - first_gram_pos, 0, word_len)  # the trigrams that still fit
    gram_word = np.repeat(np.arange(len(flat)), kept_grams)
    gram_index = np.arange(len(gram_word)) - (np.cumsum(kept_grams) - kept_grams)[gram_word]

    kept_words = word_pos < max_tokens
    word_crc = _crc32(buffer, padded_start[kept_words] + 1, word_len[kept_words])
    gram_crc = _crc32(buffer, padded_start[gram_word] + gram_index, np.full(len(gram_word), 3))
    out[row[kept_words], word_pos[kept_words]] = 1 + word_crc.astype(np.int64) % (buckets - 1)
    out[row[gram_word], first_gram_pos[gram_word] + gram_index] = 1 + gram_crc.astype(np.int64) % (buckets - 1)
    return out
