"""The full-text index of a catalog: what text an item is found by, and the keyword query over it.

Each live item has one document: its caption, the words of its file name (`IMG_2041_red-car.jpg` ->
img 2041 red car; not the folders, not the extension) and the values of the metadata fields its collection
names (`Collection.text_fields`, e.g. ["title", "tags"]; a list of strings counts, nested fields as "a.b").
The catalog writes it in the item's own transaction (insert, caption or metadata update, delete), so the
text index never disagrees with the items.

  SQLite      item_text: an FTS5 table, rowid = item id, ranked by bm25
  PostgreSQL  item_text (item_id, collection_id, body tsvector) with a GIN index on body, 'simple' config,
              ranked by ts_rank

Words are cut here, in Python, the same way for documents and queries and on both databases: NFKC, case
folded, runs of letters and digits (underscores and punctuation separate). Chinese and Japanese text has no
spaces between words, so every CJK ideograph and kana is a word of its own (character unigrams) and a run
of them in a query must appear as that run (a phrase): `红色汽车` finds "一辆红色汽车" but not "红色的汽车".
No stemming and no stop words: language-neutral, exact words. A keyword query is its words ANDed; the user's
text never reaches FTS5 or tsquery syntax (every word is quoted, and words hold no quote), so `"`, `NEAR(`,
`*` or `OR` are plain words or nothing.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

from mmsearch.errors import InvalidInput

MAX_KEYWORD_CHARS = 1000
MAX_KEYWORD_WORDS = 32
MAX_FIELD_CHARS = 10_000  # of one metadata value or caption in a document

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"


def _marks() -> str:
    """A character class body of the combining marks (Mn, Mc, Me) of the BMP: Python's \\w leaves them out,
    but they belong to the word they sit in (Devanagari vowel signs, Thai, accents in NFD text)."""
    ranges: list[list[int]] = []
    for code in range(0x300, 0x10000):
        if unicodedata.category(chr(code)).startswith("M"):
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1][1] = code
            else:
                ranges.append([code, code])
    return "".join(f"\\u{a:04x}-\\u{b:04x}" for a, b in ranges)


_WORD = re.compile(rf"[{_CJK}]|(?:[^\W_{_CJK}]|[{_marks()}])+")
_CJK_CHAR = re.compile(rf"[{_CJK}]")
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z_][A-Za-z0-9_\-]*)*\Z")  # a metadata path filters can name


def words(text: str) -> list[str]:
    """The index words of `text` (see the module docstring)."""
    return _WORD.findall(unicodedata.normalize("NFKC", text[:MAX_FIELD_CHARS]).casefold())


def file_name_words(uri: str) -> list[str]:
    """Words of the file name a uri ends with (no folders, no extension); none for content uris."""
    if uri.startswith("sha256:"):
        return []
    name = re.split(r"[?#]", uri, maxsplit=1)[0].replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, ext = name.rpartition(".")
    return words(stem if dot and stem and 0 < len(ext) <= 5 else name)


def check_text_fields(fields: Iterable[str]) -> list[str]:
    """A collection's text fields: metadata paths ("title", "exif.make"), each once, in the given order."""
    out: list[str] = []
    for field in fields:
        if not isinstance(field, str) or not _FIELD.match(field.strip()):
            raise InvalidInput(f"text field {field!r}: give metadata keys such as title or exif.make")
        if field.strip() not in out:
            out.append(field.strip())
    return out


def _field_values(meta: dict | None, path: str) -> list[str]:
    value = meta
    for part in path.split("."):
        if not isinstance(value, dict):
            return []
        value = value.get(part)
    values = value if isinstance(value, list) else [value]
    return [str(v) for v in values if isinstance(v, (str, int, float)) and not isinstance(v, bool)]


def document(uri: str, caption: str | None, meta: dict | None, fields: Sequence[str]) -> str:
    """The text an item is found by, as space-separated index words."""
    found = file_name_words(uri)
    if caption:
        found += words(caption)
    for field in fields:
        for value in _field_values(meta, field):
            found += words(value)
    return " ".join(found)


def query_terms(keywords: str) -> list[list[str]]:
    """The terms of a keyword query: each a list of words that must appear in that order (one word, or a
    CJK run). InvalidInput for a query too long; [] when it holds no word at all."""
    if not isinstance(keywords, str):
        raise InvalidInput(f"keywords must be a string, got {type(keywords).__name__}")
    if len(keywords) > MAX_KEYWORD_CHARS:
        raise InvalidInput(f"keywords are longer than {MAX_KEYWORD_CHARS} characters")
    terms: list[list[str]] = []
    for chunk in unicodedata.normalize("NFKC", keywords).casefold().split():
        run: list[str] = []
        for word in _WORD.findall(chunk):
            if _CJK_CHAR.fullmatch(word):
                run.append(word)
                continue
            if run:
                terms.append(run)
                run = []
            terms.append([word])
        if run:
            terms.append(run)
    unique = list({tuple(t): t for t in terms}.values())
    if sum(len(t) for t in unique) > MAX_KEYWORD_WORDS:
        raise InvalidInput(f"keywords hold more than {MAX_KEYWORD_WORDS} words")
    return unique


def fts5_query(terms: list[list[str]]) -> str:
    """An FTS5 MATCH expression: every term a quoted phrase, implicitly ANDed. Words hold only letters and
    digits, so nothing in them is FTS5 syntax."""
    return " ".join('"' + " ".join(term) + '"' for term in terms)


def tsquery(terms: list[list[str]]) -> str:
    """A to_tsquery text: quoted words, phrases joined by <->, terms by &."""
    parts = []
    for term in terms:
        quoted = " <-> ".join(f"'{word}'" for word in term)
        parts.append(f"({quoted})" if len(term) > 1 else quoted)
    return " & ".join(parts)


# ---- schema ---------------------------------------------------------------------------------------------

SQLITE_DDL = ("CREATE VIRTUAL TABLE IF NOT EXISTS item_text USING fts5("
              "body, tokenize = \"unicode61 remove_diacritics 0 categories 'L* N* Co M*'\")",)
POSTGRES_DDL = ("CREATE TABLE IF NOT EXISTS item_text (item_id BIGINT PRIMARY KEY, collection_id BIGINT NOT NULL, "
                "body TSVECTOR NOT NULL)",
                "CREATE INDEX IF NOT EXISTS ix_item_text_body ON item_text USING GIN (body)",
                "CREATE INDEX IF NOT EXISTS ix_item_text_collection ON item_text (collection_id)")


def create(conn, dialect: str) -> None:
    """Create the text index tables (on the caller's transaction)."""
    for ddl in SQLITE_DDL if dialect == "sqlite" else POSTGRES_DDL:
        conn.exec_driver_sql(ddl)


def insert(conn, dialect: str, collection_id: int, docs: Sequence[tuple[int, str]]) -> None:
    """Index documents [(item id, document)] (on the caller's transaction)."""
    if not docs:
        return
    if dialect == "sqlite":
        conn.exec_driver_sql("INSERT INTO item_text (rowid, body) VALUES (?, ?)", list(docs))
        return
    conn.exec_driver_sql("INSERT INTO item_text (item_id, collection_id, body) "
                         "SELECT u.id, %s, to_tsvector('simple', u.body) "
                         "FROM unnest(%s::bigint[], %s::text[]) AS u(id, body)",
                         (collection_id, [int(i) for i, _ in docs], [d for _, d in docs]))


def delete(conn, dialect: str, item_ids: Sequence[int]) -> None:
    if not item_ids:
        return
    ids = [int(i) for i in item_ids]
    if dialect == "sqlite":
        conn.exec_driver_sql(f"DELETE FROM item_text WHERE rowid IN ({', '.join('?' * len(ids))})", tuple(ids))
    else:
        conn.exec_driver_sql("DELETE FROM item_text WHERE item_id = ANY(%s::bigint[])", (ids,))


def delete_collection(conn, dialect: str, collection_id: int) -> None:
    if dialect == "sqlite":
        conn.exec_driver_sql("DELETE FROM item_text WHERE rowid IN (SELECT id FROM items WHERE collection_id = ?)",
                             (int(collection_id),))
    else:
        conn.exec_driver_sql("DELETE FROM item_text WHERE collection_id = %s", (int(collection_id),))
