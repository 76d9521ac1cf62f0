"""search.filters: the filter language, checked against the real catalog and a Python reference evaluator."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.dialects import postgresql

from indexer.catalog import Catalog, Item, NewItem
from postgres import postgres_server  # noqa: F401  (fixture)
from search import filters
from search.filters import BoolOp, Compare, Field, FilterError, In, Literal, Not, compile_filter, parse, to_sql

INJECTIONS = ["'; DROP TABLE items; --", "\" OR 1=1 --", "x' OR '1'='1", "1); DELETE FROM items; --",
              "$.a') OR json_type(meta) --", "%(param_1)s", ":param_1", "?"]

ROWS = [  # (uri, width, height, caption, meta)
    ("a.jpg", 640, 480, "a cat", {"a": 1, "s": "x", "b": True, "lic": "cc0"}),
    ("b.jpg", 1024, 768, None, {"a": 2.5, "s": "y", "b": False, "n": {"k": 4}}),
    ("c.png", 32, 32, "", {"a": "3", "s": "X", "lic": "cc-by"}),
    ("d.png", 512, 512, "dog", {}),
    ("e.gif", 100, 200, "a cat", {"a": -7, "s": "", "n": {"k": "4"}, "b": True}),
    ("f.jpg", 2048, 10, "Ünïcode ☃", {"a": 0, "s": "☃", "lic": None}),
] + [(inj, 7, 7, inj, {"s": inj}) for inj in INJECTIONS]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def catalog(request):
    """The rows above in a catalog on SQLite and on PostgreSQL: every semantic test runs on both."""
    url = "sqlite://" if request.param == "sqlite" else request.getfixturevalue("postgres_server").new_database()
    cat = Catalog(url)
    coll = cat.create_collection("f", encoder_name="m", encoder_family="siglip", encoder_digest="d", dim=2)
    with cat.write(coll.id) as (s, rev):
        ids = cat.insert_items(s, coll.id, rev, [
            NewItem(uri=uri, sha256=f"{i:064x}", width=w, height=h, caption=cap, meta=meta, vector=b"\0" * 8)
            for i, (uri, w, h, cap, meta) in enumerate(ROWS)]).tolist()
    yield cat, coll.id, ids
    cat.close()


def run(catalog, text: str) -> set[int]:
    """The ids matching `text`, found both ways the catalog uses a filter: scanning (from the metadata index
    when the filter has joins) and checking a list of candidate ids; the two must agree."""
    cat, cid, ids = catalog
    flt = compile_filter(text, Item, cat.dialect)
    scanned = set(cat.select_ids(cid, flt).tolist())
    checked = set(cat.select_ids(cid, flt, ids=ids).tolist())
    assert scanned == checked, (text, scanned, checked)
    return scanned


def rows_matching(catalog, pred) -> set[int]:
    _, _, ids = catalog
    return {i for i, row in zip(ids, ROWS) if pred(*row)}


@pytest.mark.parametrize("text, pred", [
    ("width >= 512", lambda u, w, h, c, m: w >= 512),
    ("width >= 512 AND height < 500", lambda u, w, h, c, m: w >= 512 and h < 500),
    ("width < 100 or height > 700", lambda u, w, h, c, m: w < 100 or h > 700),
    ("NOT (width < 100 OR height > 700)", lambda u, w, h, c, m: not (w < 100 or h > 700)),
    ("caption = 'a cat'", lambda u, w, h, c, m: c == "a cat"),
    ("caption != 'a cat'", lambda u, w, h, c, m: c is not None and c != "a cat"),
    ("not caption = 'a cat'", lambda u, w, h, c, m: c != "a cat"),
    ("uri IN ('a.jpg', \"d.png\", 'zzz')", lambda u, w, h, c, m: u in ("a.jpg", "d.png")),
    ("uri NOT IN ('a.jpg')", lambda u, w, h, c, m: u != "a.jpg"),
    ("meta.a = 1", lambda u, w, h, c, m: m.get("a") == 1),
    ("meta.a > 0", lambda u, w, h, c, m: isinstance(m.get("a"), (int, float)) and m["a"] > 0),
    ("meta.a = '3'", lambda u, w, h, c, m: m.get("a") == "3"),
    ("meta.b = true", lambda u, w, h, c, m: m.get("b") is True),
    ("meta.b != true", lambda u, w, h, c, m: m.get("b") is False),
    ("NOT meta.b = TRUE", lambda u, w, h, c, m: m.get("b") is not True),
    ("meta.n.k >= 4", lambda u, w, h, c, m: m.get("n", {}).get("k") == 4),
    ("meta.n.k = \"4\"", lambda u, w, h, c, m: m.get("n", {}).get("k") == "4"),
    ("meta.lic IN ('cc0', 'cc-by') AND width > 10", lambda u, w, h, c, m: m.get("lic") in ("cc0", "cc-by")),
    ("meta.s < 'y' AND meta.s >= 'X'", lambda u, w, h, c, m: isinstance(m.get("s"), str) and "X" <= m["s"] < "y"),
    ("meta.s = '☃' OR caption = 'Ünïcode ☃'", lambda u, w, h, c, m: m.get("s") == "☃"),
    ("created > '2000-01-01' and updated <= '2999-12-31T23:59:59'", lambda *r: True),
    ("created < '2000-01-01'", lambda *r: False),
    ("meta.missing = 1 OR meta.missing != 1", lambda *r: False),
    ("NOT meta.missing = 1", lambda *r: True),
])
def test_filters_select_what_they_say(catalog, text, pred):
    assert run(catalog, text) == rows_matching(catalog, pred)


def test_id_column(catalog):
    _, _, ids = catalog
    assert run(catalog, f"id IN ({ids[0]}, {ids[2]})") == {ids[0], ids[2]}
    assert run(catalog, f"id > {ids[-2]}") == {ids[-1]}


@pytest.mark.parametrize("injection", INJECTIONS)
def test_sql_injection_strings_are_plain_literals(catalog, injection):
    _, _, ids = catalog
    expected = {ids[len(ROWS) - len(INJECTIONS) + INJECTIONS.index(injection)]}
    quoted = '"' + injection.replace("\\", "\\\\").replace('"', '\\"') + '"'
    for text in (f"uri = {quoted}", f"meta.s = {quoted}", f"caption IN ({quoted})"):
        sql = str(select(Item.id).where(compile_filter(text, Item)).compile())
        plain = str(select(Item.id).where(compile_filter(text.replace(quoted, '"s"'), Item)).compile())
        assert sql == plain  # the string went into a bound parameter, not into the SQL
        assert run(catalog, text) == expected
    assert len(run(catalog, "")) == len(ROWS)  # the table is still all there


@pytest.mark.parametrize("text, column, words", [
    ("width >= AND height < 3", 10, "expected a value"),
    ("width > 5 AND", 14, "expected a field name"),
    ("colour = 'red'", 1, "unknown field 'colour'"),
    ("width = 'wide'", 9, "width is a number"),
    ("caption = 3", 11, "caption is text"),
    ("meta.x < true", 10, "booleans compare only"),
    ("(width > 1 OR height > 2", 25, "expected ')' to close the '(' at column 1"),
    ("meta.s = 'open", 10, "string is not closed"),
    ("width > 1 height > 2", 11, "expected AND, OR"),
    ("meta = 1", 1, "meta needs a key"),
    ("width.x = 1", 6, "only meta has keys"),
    ("width ! 3", 7, "'!' must be followed by '='"),
    ("width <> 3", 7, "use !="),
    ("meta.a IN 1", 11, "expected '(' after IN"),
    ("meta.a IN (1 2)", 14, "expected ',' or ')'"),
    ("meta.a NOT = 2", 12, "expected IN after NOT"),
    ("width = 9223372036854775808", 9, "64-bit"),
    ("meta.a = 1e999", 10, "out of range"),
    ("width = 12abc", 11, "runs into a name"),
    ("created > 'last week'", 11, "ISO-8601"),
    ("meta.s = 'a\\qb'", 12, "unknown escape"),
    ("width = 1 # comment", 11, "unexpected character '#'"),
    ("NOT " * 70 + "width = 1", 1 + 4 * filters.MAX_DEPTH, f"nested more than {filters.MAX_DEPTH}"),
    ("width = " + "9" * 5000, 9, "64-bit"),
    ("meta.a < " + "1" * 5000 + ".5", 10, "out of range"),
    ("meta.s = 'a\x00'", 12, "NUL"),
])
def test_bad_filters_say_where(text, column, words):
    with pytest.raises(FilterError) as info:
        parse(text)
    assert info.value.position == column - 1
    assert f"column {column}" in str(info.value)
    assert words in str(info.value)


def test_limits():
    with pytest.raises(FilterError, match="longer than"):
        parse("width = 1 OR " * 1000 + "width = 2")
    with pytest.raises(FilterError, match="at most 1024 values"):
        parse("width IN (" + ", ".join(["1"] * 1100) + ")")
    assert parse("   ") is None and parse("") is None


def test_postgresql_sql_is_parameterized_and_uses_the_metadata_index():
    cond = compile_filter("meta.a >= 2 AND meta.s = 'x' AND meta.b = true AND width < 5", Item, "postgresql")
    compiled = select(Item.id).where(cond).compile(dialect=postgresql.dialect())
    sql = str(compiled)
    assert "FROM meta_num" in sql and "FROM meta_str" in sql and "CAST(" in sql and "AS NUMERIC" in sql
    assert "'x'" not in sql and {"x", 2, 5, "a", "s", "b"} <= set(v for v in compiled.params.values()
                                                               if not isinstance(v, (tuple, list, dict)))
    # the three metadata terms can also drive a scan from the index (joins), with nothing left to check
    assert len(cond.joins) == 3 and str(cond.residual.compile()).count("width") == 1


# ---- property tests ---------------------------------------------------------------------------------

TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8)
META_FIELDS = [("a",), ("s",), ("b",), ("n", "k"), ("lic",), ("missing",)]
literal_values = st.one_of(st.integers(-10, 3000), st.floats(-10, 3000, allow_nan=False), st.booleans(),
                           TEXT, st.sampled_from(["x", "y", "X", "3", "4", "cc0", "a cat", "☃"] + INJECTIONS))


@st.composite
def comparisons(draw):
    if draw(st.booleans()):
        field = Field("meta", draw(st.sampled_from(META_FIELDS)), 0)
        values = literal_values
    else:
        name = draw(st.sampled_from(["width", "height", "caption", "uri"]))
        field = Field(name, (), 0)
        values = st.integers(0, 3000) if name in ("width", "height") else st.one_of(
            TEXT, st.sampled_from(["x", "y", "X", "a cat", "☃"] + INJECTIONS))
    if draw(st.booleans()):
        lits = draw(st.lists(values, min_size=1, max_size=4))
        return In(field, tuple(Literal(v, 0) for v in lits), draw(st.booleans()))
    value = draw(values)
    ops = ["=", "!="] if isinstance(value, bool) else list(filters.OPS)
    return Compare(field, draw(st.sampled_from(ops)), Literal(value, 0))


ast_nodes = st.recursive(
    comparisons(),
    lambda kids: st.one_of(kids.map(Not), st.tuples(st.sampled_from(["AND", "OR"]), st.lists(kids, min_size=2, max_size=3))
                           .map(lambda t: BoolOp(t[0], tuple(t[1])))),
    max_leaves=8)


def _field_value(field: Field, row):
    uri, w, h, cap, meta = row[:5]
    if not field.keys:
        return {"uri": uri, "width": w, "height": h, "caption": cap, "id": row[5] if len(row) > 5 else None}[field.name]
    value = meta
    for key in field.keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _same_kind(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool)
    if isinstance(a, (int, float)) or isinstance(b, (int, float)):
        return isinstance(a, (int, float)) and isinstance(b, (int, float))
    return isinstance(a, str) and isinstance(b, str)


def evaluate(node, row) -> bool:
    """The documented semantics, in Python: a comparison is true only for a present value of the literal's kind."""
    if isinstance(node, BoolOp):
        results = [evaluate(o, row) for o in node.operands]
        return all(results) if node.op == "AND" else any(results)
    if isinstance(node, Not):
        return not evaluate(node.operand, row)
    if isinstance(node, In):
        hit = any(evaluate(Compare(node.field, "=", lit), row) for lit in node.values)
        return not hit if node.negated else hit
    value, lit = _field_value(node.field, row), node.value.value
    if value is None or not _same_kind(value, lit):
        return False
    return {"=": value == lit, "!=": value != lit, "<": value < lit, "<=": value <= lit,
            ">": value > lit, ">=": value >= lit}[node.op]


def _strip_positions(node):
    if isinstance(node, BoolOp):
        return BoolOp(node.op, tuple(_strip_positions(o) for o in node.operands))
    if isinstance(node, Not):
        return Not(_strip_positions(node.operand))
    field = Field(node.field.name, node.field.keys, 0)
    if isinstance(node, In):
        return In(field, tuple(Literal(v.value, 0) for v in node.values), node.negated)
    return Compare(field, node.op, Literal(node.value.value, 0))


def _blank_literals(node):
    """The same tree with every literal replaced by a fixed value of its kind."""
    def blank(lit):
        v = lit.value
        return Literal(True if isinstance(v, bool) else type(v)(0) if isinstance(v, (int, float)) else "s", 0)
    if isinstance(node, BoolOp):
        return BoolOp(node.op, tuple(_blank_literals(o) for o in node.operands))
    if isinstance(node, Not):
        return Not(_blank_literals(node.operand))
    if isinstance(node, In):
        return In(node.field, tuple(blank(v) for v in node.values), node.negated)
    return Compare(node.field, node.op, blank(node.value))


def _flatten(node):
    """Parsing `(a AND b) AND c` gives AND(AND(a, b), c); compare trees after flattening nested same ops."""
    if isinstance(node, BoolOp):
        out = []
        for o in node.operands:
            o = _flatten(o)
            out.extend(o.operands if isinstance(o, BoolOp) and o.op == node.op else [o])
        return BoolOp(node.op, tuple(out))
    if isinstance(node, Not):
        return Not(_flatten(node.operand))
    return node


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(node=ast_nodes)
def test_generated_filters_match_the_reference_semantics(catalog, node):
    text = str(node)
    parsed = parse(text)
    assert _flatten(_strip_positions(parsed)) == _flatten(node)
    assert run(catalog, text) == rows_matching(catalog, lambda *row: evaluate(node, row))
    # The SQL text does not depend on literal values: they are all bound parameters.
    for dialect, compile_dialect in (("sqlite", None), ("postgresql", postgresql.dialect())):
        sql = str(select(Item.id).where(to_sql(node, Item, dialect)).compile(dialect=compile_dialect))
        blank = str(select(Item.id).where(to_sql(_blank_literals(node), Item, dialect)).compile(dialect=compile_dialect))
        assert sql == blank


FILTER_ALPHABET = st.sampled_from(list("()=!<>,.'\"\\ -+0123456789eE_") +
                                  ["AND ", "OR ", "NOT ", "IN ", "true", "false", "width", "meta.", "meta.a", "caption",
                                   "created", "'2024-01-01'", "uri", "id", "\n", "é", "☃", "\x00", ";", "--", "DROP"])


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=60), st.lists(FILTER_ALPHABET, max_size=25).map("".join)))
def test_fuzzed_filters_parse_cleanly_or_fail_with_a_position(catalog, text):
    try:
        node = parse(text)
    except FilterError as exc:
        assert 0 <= exc.position <= len(text)
        assert f"column {exc.position + 1}" in str(exc)
        return
    # Anything that parses must also run.
    cat, cid, _ = catalog
    cat.select_ids(cid, to_sql(node, Item, cat.dialect))


# ---- large expressions: everything the grammar accepts must run on both databases --------------------

def _nest(steps: int) -> str:
    """`steps` levels of nesting, alternating NOT, OR and AND, with a metadata test at the bottom."""
    text = "meta.n.k >= 4"
    for level in range(steps):
        text = (f"NOT {text}" if level % 3 == 0 else f"(width > 1 OR {text})" if level % 3 == 1
                else f"({text} AND meta.s != 'q')")
    return text


def _deepest() -> str:
    steps = 0
    while True:
        try:
            parse(_nest(steps + 1))
        except FilterError:
            return _nest(steps)
        steps += 1


LARGE = {
    "id IN 1000 values": "id IN (" + ", ".join(str(i) for i in range(1000)) + ")",
    "meta IN 1024 mixed values": "meta.a IN (" + ", ".join(
        ["1", "2.5", "'3'", "true", "-7"] + [str(i) for i in range(1019)]) + ")",
    "uri NOT IN 1000": "uri NOT IN (" + ", ".join(f"'u{i}'" for i in range(1000)) + ")",
    "500 ANDed comparisons": " AND ".join(f"id>{-i}" for i in range(500)),
    "1000 ORed comparisons": " OR ".join(f"id={i % 10}" for i in range(1000)),
    "450 ANDed metadata comparisons": " AND ".join(f"meta.s!='{i}'" for i in range(450)),
    "300 ORed metadata comparisons": " OR ".join(f"meta.a={i}" for i in range(300)),
    "deepest nesting": _deepest(),
    "a long string": "caption != '" + "x" * 8000 + "'",
    "many IN lists": " OR ".join("meta.a IN (" + ",".join(str(j) for j in range(i, i + 60)) + ")" for i in range(25)),
}


@pytest.mark.parametrize("name", sorted(LARGE))
def test_large_filters_run_and_match_the_reference(catalog, name):
    text = LARGE[name]
    assert len(text) <= filters.MAX_FILTER_CHARS
    node = parse(text)
    assert run(catalog, text) == matching_node(catalog, node)


def matching_node(catalog, node) -> set[int]:
    _, _, ids = catalog
    return {i for i, row in zip(ids, ROWS) if evaluate(node, row + (i,))}


def test_every_depth_up_to_the_limit_runs(catalog):
    deepest = _deepest()
    steps = 0
    while _nest(steps) != deepest:
        assert run(catalog, _nest(steps)) == matching_node(catalog, parse(_nest(steps)))
        steps += 1
    assert steps >= filters.MAX_DEPTH // 2
    half = filters.MAX_DEPTH // 2
    for text in (deepest, "NOT (" * half + "width = 1" + ")" * half, "NOT " * filters.MAX_DEPTH + "width = 1",
                 "(" * filters.MAX_DEPTH + "meta.a IN (1, 'x', true)" + ")" * filters.MAX_DEPTH):
        assert run(catalog, text) == matching_node(catalog, parse(text))
    with pytest.raises(FilterError, match="nested more than"):
        parse(_nest(steps + 1))


def test_a_filter_the_database_refuses_is_a_short_invalid_input(catalog, monkeypatch):
    """Whatever the database refuses while running a filter becomes a typed error without the SQL."""
    from mmsearch.errors import InvalidInput

    monkeypatch.setattr(filters, "CHAIN", 10_000)  # undo the chain splitting: SQLite's tree gets too deep
    text = " OR ".join(f"id={i % 10}" for i in range(1000))
    cat, cid, _ = catalog
    if cat.dialect != "sqlite":
        pytest.skip("PostgreSQL has no expression depth limit at this size")
    with pytest.raises(InvalidInput, match="too large for the catalog database") as info:
        cat.select_ids(cid, compile_filter(text, Item, cat.dialect))
    assert "SELECT" not in str(info.value) and "id_1" not in str(info.value) and len(str(info.value)) < 200


@st.composite
def large_nodes(draw):
    """Long chains of comparisons (up to a few hundred terms), optionally inside NOTs, with IN lists of up
    to 1024 values: the sizes the length limit admits. Sizes and a seed are drawn; the bulk is built from
    them, so hypothesis stays fast."""
    import random

    n = draw(st.integers(50, 400))
    rng = random.Random(draw(st.integers(0, 2**32)))
    terms = [draw(comparisons()) for _ in range(12)]
    node = BoolOp(draw(st.sampled_from(["AND", "OR"])), tuple(rng.choice(terms) for _ in range(n)))
    if draw(st.booleans()):
        lits = tuple(Literal(rng.randint(-5, 3000), 0) for _ in range(draw(st.integers(200, 1024))))
        field = Field("id", (), 0) if draw(st.booleans()) else Field("meta", ("a",), 0)
        node = BoolOp("OR", (node, In(field, lits, draw(st.booleans()))))
    for _ in range(draw(st.integers(0, 3))):
        node = Not(node)
    return node


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow, HealthCheck.data_too_large])
@given(node=large_nodes())
def test_generated_large_filters_run_and_match_the_reference(catalog, node):
    text = str(node)
    if len(text) > filters.MAX_FILTER_CHARS:
        with pytest.raises(FilterError, match="longer than"):
            parse(text)
        return
    parsed = parse(text)
    assert run(catalog, text) == matching_node(catalog, parsed)


def test_time_literals_are_datetimes():
    cond = compile_filter("created >= '2024-05-01T12:30:00'", Item)
    params = select(Item.id).where(cond).compile().params
    assert dt.datetime(2024, 5, 1, 12, 30) in params.values()
