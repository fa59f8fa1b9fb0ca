"""The lexical candidate source: BM25 over each entity's text in a tantivy index.

tantivy (Lucene's design, in Rust) does the tokenizing, the inverted index and the BM25 scoring; this
module only maps entities onto documents. A document holds the entity's id (a raw, untokenized term, so
that an upsert or a delete finds exactly that entity), its title and its categories; BM25 is summed over
the two text fields. A query is never parsed with tantivy's query language (a user typing ``title:x`` or
``-y`` would otherwise write query syntax): it is cut into terms by the same analyzer as the documents and
becomes a disjunction of term queries.

The index lives in memory or in a folder (``path``); writes are committed before ``upsert``/``delete``
return (a search that starts afterwards sees them), unless the caller batches them and commits once.
A deployed version's index lives in a working folder: :meth:`LexicalIndex.save` copies one consistent
commit of it into the version's checkpoint (beside the vector index, under the same checksums), and
:meth:`LexicalIndex.restore` starts a working folder from such a copy after a restart.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import tantivy

from monorec.errors import ArtifactError

__all__ = ["TEXT_FIELDS", "LexicalIndex", "LexicalSource", "analyzer"]

TEXT_FIELDS = ("title", "categories")
_WRITER_HEAP = 32_000_000  # bytes of indexing buffer (tantivy's minimum per thread is 15 MB)


def analyzer() -> tantivy.TextAnalyzer:
    """The analyzer of tantivy's "default" tokenizer (what the text fields use): split on
    non-alphanumerics, drop tokens over 40 bytes, lowercase."""
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(40))
        .filter(tantivy.Filter.lowercase())
        .build()
    )


class LexicalSource(Protocol):
    """What a version needs from its lexical index: tantivy's :class:`LexicalIndex` (embedded) or
    :class:`~monorec.retrieval.qdrant_lexical.QdrantLexical` (sparse vectors in the version's Qdrant
    collection)."""

    def upsert(
        self,
        ids: Sequence[str],
        titles: Sequence[str | None],
        categories: Sequence[str | None],
        *,
        commit: bool = True,
    ) -> None: ...

    def delete(self, ids: Sequence[str], *, commit: bool = True) -> None: ...

    def commit(self) -> None: ...

    def __len__(self) -> int: ...

    def holds(self, entity_id: str) -> bool: ...

    def ids(self) -> set[str]: ...

    def terms(self, text: str) -> list[str]: ...

    def search(self, texts: Sequence[str | None], depth: int) -> list[list[tuple[str, float]]]: ...

    def save(self, folder: str | Path) -> None: ...

    def close(self) -> None: ...


class LexicalIndex:
    """Entity id -> (title, categories) documents, searched by BM25 (see the module docstring)."""

    def __init__(self, path: str | Path | None = None) -> None:
        builder = tantivy.SchemaBuilder()
        builder.add_text_field("entity_id", stored=True, tokenizer_name="raw")
        for field in TEXT_FIELDS:
            builder.add_text_field(field, index_option="freq")  # BM25 needs term frequencies, not positions
        self.schema = builder.build()
        self.path = None if path is None else Path(path)
        if self.path is not None:
            self.path.mkdir(parents=True, exist_ok=True)
        self.index = tantivy.Index(self.schema, path=None if path is None else str(path), reuse=True)
        self._analyzer = analyzer()
        self._writer: tantivy.IndexWriter | None = None
        self._dirty = False  # written, not yet committed
        self._closed = False
        self._lock = threading.Lock()  # one writer; searches never wait for it

    def _write(self) -> tantivy.IndexWriter:
        if self._closed:
            # a late writer (a loader outliving its version's close) must fail, not write into a new
            # writer: its earlier uncommitted writes were dropped, so a checkpoint now would miss them
            raise RuntimeError(f"lexical index {self.path or '(in memory)'} is closed")
        if self._writer is None:
            self._writer = self.index.writer(heap_size=_WRITER_HEAP, num_threads=1)
        return self._writer

    def upsert(
        self,
        ids: Sequence[str],
        titles: Sequence[str | None],
        categories: Sequence[str | None],
        *,
        commit: bool = True,
    ) -> None:
        """Adds or replaces entities' documents. ``categories`` are "|"-separated like the catalogue's.
        ``commit=False`` leaves them invisible until :meth:`commit` (a commit costs milliseconds: a stream
        of changes commits once per batch, not once per change)."""
        # the last document of each id wins; one delete of the ids' old documents, then the adds (a delete
        # covers only what was added before it): a delete per document took 60% of a bulk page's writes
        latest = {e: (t, c) for e, t, c in zip(ids, titles, categories, strict=True)}
        with self._lock:
            writer = self._write()
            self._delete_all_of(writer, list(latest))
            for entity_id, (title, cats) in latest.items():
                writer.add_document(
                    tantivy.Document(entity_id=entity_id, title=title or "", categories=(cats or "").replace("|", " "))
                )
            self._dirty = True
        if commit:
            self.commit()

    def delete(self, ids: Sequence[str], *, commit: bool = True) -> None:
        with self._lock:
            self._delete_all_of(self._write(), list(ids))
            self._dirty = True
        if commit:
            self.commit()

    def _delete_all_of(self, writer: tantivy.IndexWriter, ids: list[str]) -> None:
        """Deletes every document of ``ids`` added so far, in one operation (under the lock)."""
        if ids:
            writer.delete_documents_by_query(tantivy.Query.term_set_query(self.schema, "entity_id", ids))

    def commit(self) -> None:
        """Makes every write so far visible to searches (a no-op when there is none)."""
        with self._lock:
            if not self._dirty:
                return
            self._write().commit()
            # the reload under the lock too: a second committer (a paced commit's timer, a checkpoint) that
            # finds nothing dirty returns only once the first one's commit is visible, never between the two
            self.index.reload()
            self._dirty = False

    def __len__(self) -> int:
        return int(self.index.searcher().num_docs)

    def holds(self, entity_id: str) -> bool:
        """Whether a (committed) document has this id."""
        query = tantivy.Query.term_query(self.schema, "entity_id", entity_id)
        return bool(self.index.searcher().search(query, 1, count=False).hits)

    def ids(self) -> set[str]:
        """Every entity id with a (committed) document: what a version's validation compares with the
        catalogue (a count alone would pass a missing document beside a stale one)."""
        searcher = self.index.searcher()
        if searcher.num_docs == 0:
            return set()
        hits = searcher.search(tantivy.Query.all_query(), searcher.num_docs, count=False).hits
        return {searcher.doc(address)["entity_id"][0] for _, address in hits}

    def save(self, folder: str | Path) -> None:
        """Copies the index into the new folder ``folder`` (a checkpoint): writes so far are committed, then
        the files of that commit are copied (its ``meta.json`` and the segments it lists), as hard links
        where the filesystem allows: tantivy writes a segment's files once and never alters them (see
        :meth:`restore`), so the copy keeps the commit's content while the index goes on. A background
        merge may delete a listed segment meanwhile (even before the listing): the copy then starts again
        from the newer commit. Never waits for merges (a large one takes seconds at 100k entities).

        Raises:
            ValueError: the index lives in memory (it has no files).
        """
        if self.path is None:
            raise ValueError("an in-memory lexical index has no files to save")
        self.commit()
        target = Path(folder)
        for _attempt in range(10):
            meta = (self.path / "meta.json").read_text()
            segments = tuple(seg["segment_id"].replace("-", "") + "." for seg in json.loads(meta)["segments"])
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            try:
                for file in self.path.iterdir():
                    if file.name.startswith(segments):
                        _link_or_copy(str(file), str(target / file.name))
            except FileNotFoundError:  # merged away while copying
                continue
            # a merge that committed (and had its old segments' files deleted) before the listing above
            # shows as a newer meta.json: tantivy deletes a segment's files only once no commit lists them
            if (self.path / "meta.json").read_text() != meta:
                continue
            (target / "meta.json").write_text(meta)
            return
        raise OSError(f"{self.path}: segments kept changing while the lexical index was copied")

    @classmethod
    def restore(cls, saved: str | Path, path: str | Path) -> LexicalIndex:
        """A working index in ``path`` (replacing what is there) started from a copy made by :meth:`save`.
        Its files are hard links to the saved ones where the filesystem allows (no copy, and the replicas
        of one host share their pages): tantivy never writes into an existing file (segments are written
        once, ``meta.json`` is replaced by a rename), so writing to the working index never alters the
        checkpoint.

        Raises:
            ArtifactError: ``saved`` holds no lexical index, or tantivy cannot open it.
        """
        saved, path = Path(saved), Path(path)
        if not (saved / "meta.json").is_file():
            raise ArtifactError(f"{saved}: lexical index missing")
        shutil.rmtree(path, ignore_errors=True)
        shutil.copytree(saved, path, copy_function=_link_or_copy)
        try:
            return cls(path)
        except Exception as exc:  # tantivy reports a broken index as ValueError or OSError, by case
            raise ArtifactError(f"{saved}: lexical index does not open: {exc}") from None

    def terms(self, text: str) -> list[str]:
        """The terms a query text is searched by (the documents' analyzer)."""
        return list(dict.fromkeys(self._analyzer.analyze(text)))

    def search(self, texts: Sequence[str | None], depth: int) -> list[list[tuple[str, float]]]:
        """Per text: up to ``depth`` (entity id, BM25 score), best first; an empty or missing text (or one
        with no indexed term) proposes nothing."""
        searcher = self.index.searcher()
        out: list[list[tuple[str, float]]] = []
        for text in texts:
            terms = self.terms(text) if text else []
            if not terms or depth <= 0:
                out.append([])
                continue
            query = tantivy.Query.boolean_query(
                [
                    (tantivy.Occur.Should, tantivy.Query.term_query(self.schema, field, term, index_option="freq"))
                    for term in terms
                    for field in TEXT_FIELDS
                ]
            )
            hits = searcher.search(query, depth, count=False).hits
            out.append([(searcher.doc(address)["entity_id"][0], float(score)) for score, address in hits])
        return out

    def close(self) -> None:
        """Releases the folder; writes not committed are dropped (a checkpoint never held them: the change
        log replays them), and every later write, commit or save raises."""
        with self._lock:
            self._closed = True
            if self._writer is not None:
                self._writer.wait_merging_threads()  # consumes the writer and releases the folder's lock
                self._writer = None


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or one without hard links
        shutil.copy2(source, target)
