"""The filter language: a small expression over item columns and metadata -> parameterized SQLAlchemy.

    width >= 512 AND height >= 512
    meta.license IN ("cc-by", "cc0") AND NOT meta.nsfw = true
    (caption != "" OR meta.source = 'flickr') AND meta.exif.iso < 800.5

Grammar (keywords are case-insensitive):

    expr       := and_expr (OR and_expr)*
    and_expr   := not_expr (AND not_expr)*
    not_expr   := NOT not_expr | '(' expr ')' | comparison
    comparison := field op literal | field [NOT] IN '(' literal (',' literal)* ')'
    op         := = | != | < | <= | > | >=
    field      := id | uri | sha256 | width | height | caption | created | updated
                | meta.KEY(.KEY)*            KEY: letters, digits, _ and -, not starting with a digit or -
    literal    := 'string' | "string" (backslash escapes \\ \' \" \n \t) | number | true | false

Semantics: a comparison is true only when the field is present and holds a value of the literal's kind
(number, string or boolean) that satisfies it; otherwise it is false, never NULL, so `NOT` is plain
negation (`NOT meta.k = 1` also matches items without `meta.k`). Strings compare by code point;
booleans support only = and !=; `created` / `updated` compare with ISO-8601 strings.

Every literal becomes a bound parameter; nothing from the filter text is ever spliced into SQL. Errors
are `FilterError` (an `InvalidInput`) naming the 1-based column where the text stops making sense.

Whatever parses also runs on SQLite and PostgreSQL: filters are at most MAX_FILTER_CHARS long, nest at most
MAX_DEPTH levels (SQLite's parser overflows at about 40 levels of parentheses), IN lists hold at most
MAX_IN_VALUES values and become one SQL IN per kind of value, and long AND / OR chains are split into
groups of CHAIN terms (SQLite makes a chain into an expression tree as deep as the chain, at most 1000).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from typing import Union

from sqlalchemy import BigInteger, Boolean, Numeric, and_, bindparam, case, cast, exists, false, func, literal, not_, or_, select, true
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal

from mmsearch.errors import InvalidInput
from indexer.catalog import FILTER_COLLECTION, STRING_PREFIX, ItemFilter, MetaKey, MetaNum, MetaStr

MAX_FILTER_CHARS = 8192
MAX_DEPTH = 24        # nesting of parentheses / NOT: SQLite's parser (a fixed 100-slot stack before 3.46)
                      # stops at about 40 levels of parentheses, and the SQL adds some of its own
MAX_IN_VALUES = 1024
CHAIN = 64            # AND / OR terms per SQL chain: longer ones are split into parenthesized groups, since
                      # SQLite parses a chain into a tree as deep as the chain (its limit: depth 1000)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# Built-in columns: name -> kind of literal they compare with.
COLUMNS = {"id": "int", "uri": "str", "sha256": "str", "width": "int", "height": "int", "caption": "str",
           "created": "time", "updated": "time"}
NULLABLE = {"caption"}  # the other columns always hold a value
OPS = ("=", "!=", "<", "<=", ">", ">=")
KEYWORDS = {"and", "or", "not", "in", "true", "false"}


class FilterError(InvalidInput):
    """A filter that does not parse or does not type-check; `position` is the 0-based offset."""

    def __init__(self, message: str, position: int, text: str):
        self.position = position
        near = text[position:position + 20]
        where = f"near {near!r}" if near else "at the end"
        super().__init__(f"bad filter at column {position + 1} ({where}): {message}")


# -- AST ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Field:
    name: str                 # a built-in column name, or "meta"
    keys: tuple[str, ...]     # metadata path; () for built-in columns
    pos: int

    def __str__(self) -> str:
        return ".".join(("meta",) + self.keys) if self.keys else self.name


@dataclass(frozen=True)
class Literal:
    value: Union[str, int, float, bool]
    pos: int

    def __str__(self) -> str:
        if isinstance(self.value, bool):
            return "true" if self.value else "false"
        if isinstance(self.value, str):
            escaped = self.value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
            return f'"{escaped}"'
        return repr(self.value)


@dataclass(frozen=True)
class Compare:
    field: Field
    op: str
    value: Literal

    def __str__(self) -> str:
        return f"{self.field} {self.op} {self.value}"


@dataclass(frozen=True)
class In:
    field: Field
    values: tuple[Literal, ...]
    negated: bool

    def __str__(self) -> str:
        return f"{self.field} {'NOT IN' if self.negated else 'IN'} ({', '.join(map(str, self.values))})"


@dataclass(frozen=True)
class Not:
    operand: "Node"

    def __str__(self) -> str:
        return f"NOT ({self.operand})"


@dataclass(frozen=True)
class BoolOp:
    op: str                   # "AND" | "OR"
    operands: tuple["Node", ...]

    def __str__(self) -> str:
        return f" {self.op} ".join(f"({o})" for o in self.operands)


Node = Union[Compare, In, Not, BoolOp]


# -- tokenizer ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Token:
    kind: str     # "name" | "keyword" | "op" | "string" | "number" | "(" | ")" | "," | "." | "end"
    text: str
    value: object
    pos: int


_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t"}


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in "(),.":
            tokens.append(Token(ch, ch, None, i))
            i += 1
        elif ch in "=!<>":
            two = text[i:i + 2]
            op = two if two in ("!=", "<=", ">=") else ch
            if op == "!":
                raise FilterError("'!' must be followed by '=' (use NOT for negation)", i, text)
            if op == "<" and two == "<>":
                raise FilterError("use != for 'not equal'", i, text)
            tokens.append(Token("op", op, None, i))
            i += len(op)
        elif ch in "'\"":
            start, i, chars = i, i + 1, []
            while True:
                if i >= n:
                    raise FilterError("string is not closed", start, text)
                c = text[i]
                if c == ch:
                    i += 1
                    break
                if c == "\\":
                    if i + 1 >= n or text[i + 1] not in _ESCAPES:
                        raise FilterError("unknown escape in string (use \\\\ \\' \\\" \\n \\t)", i, text)
                    chars.append(_ESCAPES[text[i + 1]])
                    i += 2
                else:
                    chars.append(c)
                    i += 1
            tokens.append(Token("string", text[start:i], "".join(chars), start))
        elif ch.isdigit() or (ch in "+-." and _NUMBER.match(text, i)):
            m = _NUMBER.match(text, i)
            if m is None:
                raise FilterError(f"unexpected character {ch!r}", i, text)
            end = m.end()
            if end < n and (text[end].isalnum() or text[end] == "_"):
                raise FilterError("a number runs into a name; put a space or operator between them", end, text)
            raw = m.group()
            if re.fullmatch(r"[+-]?\d+", raw):
                if len(raw.lstrip("+-").lstrip("0")) > 19:  # before int(): it refuses over 4300 digits
                    raise FilterError("integer out of the 64-bit range", i, text)
                value: int | float = int(raw)
                if not INT64_MIN <= value <= INT64_MAX:
                    raise FilterError("integer out of the 64-bit range", i, text)
            else:
                value = float(raw)
                if not math.isfinite(value):
                    raise FilterError("number out of range", i, text)
            tokens.append(Token("number", raw, value, i))
            i = end
        elif _NAME.match(text, i):
            m = _NAME.match(text, i)
            word = m.group()
            kind = "keyword" if word.lower() in KEYWORDS else "name"
            tokens.append(Token(kind, word, word.lower() if kind == "keyword" else word, i))
            i = m.end()
        else:
            raise FilterError(f"unexpected character {ch!r}", i, text)
    tokens.append(Token("end", "", None, n))
    return tokens


# -- parser -------------------------------------------------------------------------------------------

class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0
        self.depth = 0

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def error(self, message: str, tok: Token | None = None) -> FilterError:
        tok = tok or self.peek()
        return FilterError(message, tok.pos, self.text)

    def found(self, tok: Token) -> str:
        return "the end of the filter" if tok.kind == "end" else repr(tok.text)

    def is_keyword(self, word: str) -> bool:
        tok = self.peek()
        return tok.kind == "keyword" and tok.value == word

    def parse(self) -> Node:
        node = self.expr()
        tok = self.peek()
        if tok.kind != "end":
            raise self.error(f"expected AND, OR or the end of the filter, found {self.found(tok)}")
        return node

    def nested(self, tok: Token):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"nested more than {MAX_DEPTH} levels deep", tok)

    def expr(self) -> Node:
        operands = [self.and_expr()]
        while self.is_keyword("or"):
            self.take()
            operands.append(self.and_expr())
        return operands[0] if len(operands) == 1 else BoolOp("OR", tuple(operands))

    def and_expr(self) -> Node:
        operands = [self.not_expr()]
        while self.is_keyword("and"):
            self.take()
            operands.append(self.not_expr())
        return operands[0] if len(operands) == 1 else BoolOp("AND", tuple(operands))

    def not_expr(self) -> Node:
        tok = self.peek()
        if self.is_keyword("not"):
            self.take()
            self.nested(tok)
            node = Not(self.not_expr())
            self.depth -= 1
            return node
        if tok.kind == "(":
            self.take()
            self.nested(tok)
            node = self.expr()
            self.depth -= 1
            close = self.peek()
            if close.kind != ")":
                raise self.error(f"expected ')' to close the '(' at column {tok.pos + 1}, found {self.found(close)}")
            self.take()
            return node
        return self.comparison()

    def field(self) -> Field:
        tok = self.take()
        if tok.kind != "name":
            raise self.error(f"expected a field name (a column such as width, or meta.KEY), found {self.found(tok)}", tok)
        if tok.text == "meta":
            keys = []
            while self.peek().kind == ".":
                self.take()
                key = self.take()
                if key.kind not in ("name", "keyword"):
                    raise self.error(f"expected a metadata key after '.', found {self.found(key)}", key)
                keys.append(key.text)
            if not keys:
                raise self.error("meta needs a key: meta.KEY", tok)
            return Field("meta", tuple(keys), tok.pos)
        if self.peek().kind == ".":
            raise self.error(f"only meta has keys; {tok.text!r} is not meta", self.peek())
        if tok.text not in COLUMNS:
            raise self.error(f"unknown field {tok.text!r}; fields are {', '.join(COLUMNS)} and meta.KEY", tok)
        return Field(tok.text, (), tok.pos)

    def literal(self) -> Literal:
        tok = self.take()
        if tok.kind in ("string", "number"):
            return Literal(tok.value, tok.pos)
        if tok.kind == "keyword" and tok.value in ("true", "false"):
            return Literal(tok.value == "true", tok.pos)
        raise self.error(f"expected a value (a quoted string, a number, true or false), found {self.found(tok)}", tok)

    def comparison(self) -> Node:
        field = self.field()
        negated = False
        if self.is_keyword("not"):
            self.take()
            negated = True
            if not self.is_keyword("in"):
                raise self.error(f"expected IN after NOT, found {self.found(self.peek())}")
        if self.is_keyword("in"):
            self.take()
            if self.peek().kind != "(":
                raise self.error(f"expected '(' after IN, found {self.found(self.peek())}")
            self.take()
            values = [self.literal()]
            while self.peek().kind == ",":
                self.take()
                values.append(self.literal())
                if len(values) > MAX_IN_VALUES:
                    raise self.error(f"IN takes at most {MAX_IN_VALUES} values", )
            close = self.peek()
            if close.kind != ")":
                raise self.error(f"expected ',' or ')' in the IN list, found {self.found(close)}")
            self.take()
            node: Node = In(field, tuple(values), negated)
        else:
            op = self.take()
            if op.kind != "op":
                raise self.error(f"expected a comparison (= != < <= > >= IN) after {str(field)!r}, found {self.found(op)}", op)
            node = Compare(field, op.text, self.literal())
        _check_types(node, self.text)
        return node


def _check_types(node: Compare | In, text: str) -> None:
    field = node.field
    values = node.values if isinstance(node, In) else (node.value,)
    for lit in values:
        value = lit.value
        if isinstance(node, Compare) and isinstance(value, bool) and node.op not in ("=", "!="):
            raise FilterError(f"booleans compare only with = or !=, not {node.op}", lit.pos, text)
        if field.keys:
            continue
        kind = COLUMNS[field.name]
        if kind == "int" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise FilterError(f"{field.name} is a number; compare it with a number, not {str(lit)}", lit.pos, text)
        if kind == "str" and not isinstance(value, str):
            raise FilterError(f"{field.name} is text; compare it with a quoted string, not {str(lit)}", lit.pos, text)
        if kind == "time":
            if not isinstance(value, str):
                raise FilterError(f"{field.name} is a time; compare it with an ISO-8601 string such as \"2024-05-01\"",
                                  lit.pos, text)
            try:
                dt.datetime.fromisoformat(value)
            except ValueError:
                raise FilterError(f"{value!r} is not an ISO-8601 time (e.g. \"2024-05-01T12:00:00\")", lit.pos, text) from None


def parse(text: str) -> Node | None:
    """Parse a filter; None for an empty (all-whitespace) filter. Raises FilterError."""
    if not isinstance(text, str):
        raise InvalidInput(f"filter must be a string, got {type(text).__name__}")
    if len(text) > MAX_FILTER_CHARS:
        raise FilterError(f"filter longer than {MAX_FILTER_CHARS} characters", MAX_FILTER_CHARS, text)
    for i, ch in enumerate(text):
        if ch == "\x00" or "\ud800" <= ch <= "\udfff":
            raise FilterError("NUL characters and lone surrogates are not allowed", i, text)
    if not text.strip():
        return None
    return _Parser(text).parse()


# -- SQL ----------------------------------------------------------------------------------------------

def _kind(value) -> str:
    if isinstance(value, bool):
        return "bool"
    return "number" if isinstance(value, (int, float)) else "str"


# The metadata index (indexer/catalog.py) keeps numbers and booleans in meta_num, strings in meta_str.
_TABLES = {"number": (MetaNum, "n"), "bool": (MetaNum, "b"), "str": (MetaStr, "s")}
_PREFIX = STRING_PREFIX
_JOINS_MAX = 4  # metadata terms of a top-level AND that may drive a scan; the rest are checked per row


class _SQL:
    """Turns an AST into SQL over `model` (catalog.Item) for one database dialect: each comparison as a
    condition on one item (metadata terms: an EXISTS lookup in the metadata index by item id), and the
    metadata terms of a top-level AND also as joins that can start a scan from the index."""

    def __init__(self, model, dialect: str):
        if dialect not in ("sqlite", "postgresql"):
            raise InvalidInput(f"filters need SQLite or PostgreSQL, not {dialect}")
        self.model = model
        self.dialect = dialect
        self.aliases = 0

    def item_filter(self, node: Node) -> ItemFilter:
        condition = self.node(node)
        terms = list(node.operands) if isinstance(node, BoolOp) and node.op == "AND" else [node]
        joins, rest = [], []
        for term in terms:
            join = self.join(term) if len(joins) < _JOINS_MAX else None
            if join is None:
                rest.append(self.node(term))
                continue
            (table, on), exact = join
            joins.append((table, on))
            if not exact:
                rest.append(self.node(term))
        residual = _chain("AND", rest) if rest else None
        return ItemFilter(condition=condition, joins=tuple(joins), residual=residual)

    # -- conditions on one item --

    def node(self, node: Node):
        if isinstance(node, BoolOp):
            return _chain(node.op, [self.node(o) for o in node.operands])
        if isinstance(node, Not):
            if isinstance(node.operand, Not):  # conditions are never NULL, so NOT NOT x is x
                return self.node(node.operand.operand)
            return not_(Grouping(self.node(node.operand)))
        if isinstance(node, In):
            matches = self.member(node.field, [lit.value for lit in node.values])
            return not_(matches) if node.negated else matches
        return self.compare(node.field, node.op, node.value.value)

    def compare(self, field: Field, op: str, value):
        if field.keys:
            return Grouping(self.meta_compare(field.keys, op, value))
        column = getattr(self.model, field.name)
        if COLUMNS[field.name] == "time":
            value = dt.datetime.fromisoformat(value)
        if COLUMNS[field.name] == "str" and op in ("<", "<=", ">", ">=") and self.dialect == "postgresql":
            column = column.collate("C")  # by code point, whatever the database's locale
        condition = _apply(column, op, value)
        if field.name in NULLABLE:
            # Never NULL: a missing value makes the comparison false, so NOT stays a plain negation.
            condition = and_(getattr(self.model, field.name).is_not(None), condition)
        return Grouping(condition)

    def member(self, field: Field, values: list):
        """`field IN (values)` as one IN per kind of value, not a chain of equalities."""
        if not field.keys:
            column = getattr(self.model, field.name)
            if COLUMNS[field.name] == "time":
                values = [dt.datetime.fromisoformat(v) for v in values]
            condition = column.in_([literal(v) for v in values])
            if field.name in NULLABLE:
                condition = and_(column.is_not(None), condition)
            return Grouping(condition)
        by_kind: dict[str, list] = {}
        for v in values:
            by_kind.setdefault(_kind(v), []).append(v)
        parts = []
        for kind, vs in by_kind.items():
            long = [v for v in vs if kind == "str" and len(v) >= _PREFIX]
            short = [v for v in vs if v not in long] if long else vs
            if short:
                parts.append(Grouping(self.meta_exists(field.keys, kind, lambda col, vs=short, kind=kind:
                                                       col.in_([self.param(v, kind) for v in vs]))))
            parts.extend(Grouping(self.meta_compare(field.keys, "=", v)) for v in long)
        return parts[0] if len(parts) == 1 else _chain("OR", parts)

    def meta_compare(self, keys: tuple[str, ...], op: str, value):
        kind = _kind(value)
        if kind == "bool":  # = true / != false: holds true; = false / != true: holds false
            return self.meta_exists(keys, "bool", lambda col: col == literal(1 if value == (op == "=") else 0))
        if kind == "str" and len(value) >= _PREFIX:
            # Index rows hold the first _PREFIX characters: a row equal to the literal's prefix may be a cut
            # string, decided from the item's JSON; every other row is decided by its prefix alone.
            head = literal(value[:_PREFIX])
            return self.meta_exists(keys, kind, lambda col: or_(
                and_(col != head, _apply(col, op, value)),
                and_(col == head, self.json_compare(keys, op, value))))
        return self.meta_exists(keys, kind, lambda col: _apply(col, op, self.param(value, kind)))

    def meta_exists(self, keys: tuple[str, ...], kind: str, value_condition):
        table, code = _TABLES[kind]
        found = exists().where(table.item_id == self.model.id,
                               table.key_id == self.key_id(keys, code, self.model.collection_id),
                               value_condition(table.value))
        return found.is_(true()) if self.dialect == "postgresql" else found

    def key_id(self, keys: tuple[str, ...], code: str, collection_id):
        """The id of the collection's key (one value: SQLite then plans `key_id = ? AND value ...` as the
        index range it is, where an IN list of keys counts as 25 ranges and loses to a scan)."""
        return (select(MetaKey.id).where(MetaKey.collection_id == collection_id, MetaKey.path == literal(".".join(keys)),
                                         MetaKey.kind == literal(code))
                .correlate_except(MetaKey).scalar_subquery())  # items: the row of the enclosing query

    def param(self, value, kind: str):
        if kind == "bool":
            value = 1 if value else 0
        if kind != "str" and self.dialect == "postgresql":
            return cast(literal(value), Numeric)  # a numeric parameter: comparing as float8 skips the index
        return literal(value)

    def json_compare(self, keys: tuple[str, ...], op: str, value: str):
        """`meta.keys OP value` for a string, from the item's JSON (long strings only)."""
        meta = self.model.meta
        if self.dialect == "sqlite":
            path = literal("$" + "".join(f'."{k}"' for k in keys))
            return case((func.json_type(meta, path) == literal("text"),
                         _apply(func.json_extract(meta, path), op, value)), else_=false())
        node = meta[keys]
        typeof = func.jsonb_typeof if _is_jsonb(meta) else func.json_typeof
        return case((typeof(node) == literal("string"), _apply(node.as_string().collate("C"), op, value)),
                    else_=false())

    # -- joins that start a scan from the metadata index --

    def join(self, node: Node):
        """((table, ON clause), exact) for a metadata comparison whose matches an index range can list, or
        None. `exact`: the ON clause alone decides the comparison (else it only narrows the rows)."""
        if isinstance(node, Compare) and node.field.keys and node.op != "!=":
            value, kind = node.value.value, _kind(node.value.value)
            if kind == "bool" and node.op != "=":
                return None
            if kind == "bool":
                return self.joined(node.field.keys, kind, lambda col: col == literal(1 if value else 0)), True
            if kind == "str" and len(value) >= _PREFIX:
                head = value[:_PREFIX]
                narrow = {"=": lambda col: col == literal(head), "<": lambda col: col < literal(value),
                          "<=": lambda col: col <= literal(value), ">": lambda col: col >= literal(head),
                          ">=": lambda col: col >= literal(head)}[node.op]
                return self.joined(node.field.keys, kind, narrow), False
            return self.joined(node.field.keys, kind, lambda col: _apply(col, node.op, self.param(value, kind))), True
        if isinstance(node, In) and node.field.keys and not node.negated:
            values = [lit.value for lit in node.values]
            kinds = {_kind(v) for v in values}
            if len(kinds) != 1 or any(isinstance(v, str) and len(v) >= _PREFIX for v in values):
                return None
            (kind,) = kinds
            if kind == "bool":
                return self.joined(node.field.keys, kind, lambda col: col.in_(
                    [literal(1 if v else 0) for v in values])), True
            return self.joined(node.field.keys, kind, lambda col: col.in_([self.param(v, kind) for v in values])), True
        return None

    def joined(self, keys: tuple[str, ...], kind: str, value_condition):
        table, code = _TABLES[kind]
        self.aliases += 1
        alias = table.__table__.alias(f"mj{self.aliases}")
        # the scan starts here, before any item row is read: the collection comes as a parameter; the
        # catalog joins the alias on item_id (to the items, or to the first alias when nothing else is checked)
        on = and_(alias.c.key_id == self.key_id(keys, code, bindparam(FILTER_COLLECTION, type_=BigInteger())),
                  value_condition(alias.c.value))
        return alias, on


class Grouping(ColumnElement):
    """A boolean in parentheses that SQLAlchemy keeps as one term: its own grouping is flattened back into
    an enclosing AND / OR chain of the same operator, which is what makes chains long."""

    type = Boolean()
    inherit_cache = True
    _is_implicitly_boolean = True  # so SQLite's WHERE does not compare it with 1 (which hides it from indexes)
    _traverse_internals = [("clause", InternalTraversal.dp_clauseelement)]

    def __init__(self, clause):
        self.clause = clause


@compiles(Grouping)
def _render_grouping(element, compiler, **kw):
    return "(" + compiler.process(element.clause, **kw) + ")"


def _chain(op: str, parts: list):
    """AND / OR of `parts`, split into parenthesized groups of at most CHAIN terms."""
    join = and_ if op == "AND" else or_
    while len(parts) > CHAIN:
        parts = [Grouping(join(*parts[i:i + CHAIN])) for i in range(0, len(parts), CHAIN)]
    return parts[0] if len(parts) == 1 else Grouping(join(*parts))


def _apply(expr, op: str, value):
    value = value if isinstance(value, ColumnElement) else literal(value)
    return {"=": expr == value, "!=": expr != value, "<": expr < value, "<=": expr <= value,
            ">": expr > value, ">=": expr >= value}[op]


def _is_jsonb(column) -> bool:
    impl = column.type.dialect_impl(postgresql.dialect())
    return isinstance(impl, postgresql.JSONB)


def to_sql(node: Node | None, model, dialect: str = "sqlite"):
    """The filter as SQL over the item model (catalog.Item): an ItemFilter, usable as a plain SQLAlchemy
    condition and by Catalog.select_ids / delete_where, which also use its joins; `true()` for no filter."""
    if node is None:
        return true()
    return _SQL(model, dialect).item_filter(node)


def compile_filter(text: str, model, dialect: str = "sqlite"):
    """Parse and translate in one step (raises FilterError on bad input)."""
    return to_sql(parse(text), model, dialect)
