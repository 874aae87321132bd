"""The Logging query language: a tokenizer, a recursive-descent parser, evaluation.

Precedence follows Google's Logging query language reference
(cloud.google.com/logging/docs/view/logging-query-language), which differs from
most languages: ``NOT`` binds tightest, then ``OR``, then ``AND``, so
``a OR NOT b AND NOT c OR d`` means ``(a OR (NOT b)) AND ((NOT c) OR d)``.
Terms written side by side are joined by an implicit ``AND`` with the same
(lowest) precedence as an explicit one, as in Google's filtering grammar (AIP-160).
The boolean operators are keywords only in upper case, so ``and`` is a search
term. ``--`` starts a comment that runs to the end of the line, and the functions
``log_id``, ``SEARCH``, ``sample`` and ``ip_in_net`` are in ``functions.py``.

Regular expressions (``=~`` and ``!~``) run on RE2, the engine Google's Logging
uses, so matching takes time linear in the input and no pattern can stall the
process the way a backtracking engine can.

Filters are evaluated over the JSON form of a LogEntry (camelCase field names,
``google.protobuf.json_format.MessageToDict``), so ``jsonPayload.a.b`` and
``httpRequest.status`` walk that dictionary.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import re2

from taskctl.localcloud.logging.functions import (
    Argument,
    FunctionCall,
    IpInNetCall,
    LogIdCall,
    SampleCall,
    SearchCall,
    build_call,
)
from taskctl.localcloud.logging.values import (
    MISSING,
    field_leaves,
    normalize_log_name,
    severity_level,
    string_leaves,
)

# Top-level LogEntry fields a filter may name, by their JSON (camelCase) names.
# Snake-case spellings are accepted too and mapped onto these.
SCALAR_FIELDS = frozenset(
    {
        "logName",
        "timestamp",
        "receiveTimestamp",
        "severity",
        "insertId",
        "textPayload",
        "trace",
        "spanId",
        "traceSampled",
    }
)
STRUCTURED_FIELDS = frozenset(
    {
        "resource",
        "labels",
        "jsonPayload",
        "protoPayload",
        "httpRequest",
        "operation",
        "sourceLocation",
        "split",
    }
)
TIMESTAMP_FIELDS = frozenset({"timestamp", "receiveTimestamp"})
_SNAKE_TO_CAMEL = {
    re.sub(r"([A-Z])", lambda match: "_" + match.group(1).lower(), name): name
    for name in SCALAR_FIELDS | STRUCTURED_FIELDS
}

COMPARATORS = ("<=", ">=", "!=", "=~", "!~", "<", ">", "=", ":")
KEYWORDS = frozenset({"AND", "OR", "NOT"})
# Characters that end an unquoted word. The reference requires quotes around
# values that contain any of them, e.g. timestamps with their colons.
_WORD_DELIMITERS = frozenset('()"=<>!:~,') | frozenset(" \t\r\n")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}
# The maximum nesting depth of parentheses, NOT and '-'. The value 64 is the
# local cloud's own choice, not a limit Google documents. It is far beyond
# hand-written filters and well inside Python's recursion limit.
MAX_NESTING_DEPTH = 64

_RE2_OPTIONS = re2.Options()
# RE2 otherwise prints each rejected pattern to stderr itself, and the filter
# error already returns it to the caller.
_RE2_OPTIONS.log_errors = False

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?)?"
    r"([Zz]|[+-]\d{2}:\d{2})?$"
)


class FilterError(ValueError):
    """A filter that does not parse or names something that cannot be compared."""

    def __init__(self, message: str, text: str, position: int) -> None:
        line = text.count("\n", 0, position) + 1
        column = position - (text.rfind("\n", 0, position) + 1) + 1
        super().__init__(f"invalid filter: {message} at line {line}, column {column}")
        self.position = position


# ---------------------------------------------------------------------------
# Tokens


@dataclass(frozen=True)
class Token:
    kind: str  # "word", "string", "keyword", "comparator", "(", ")", ",", "end"
    text: str
    position: int
    spaced: bool  # whitespace comes right before the token


def tokenize(text: str) -> list[Token]:
    """Split ``text`` into tokens, ending with an ``end`` token."""
    tokens: list[Token] = []
    index = 0
    spaced = True
    while index < len(text):
        char = text[index]
        if char.isspace():
            index += 1
            spaced = True
            continue
        if text.startswith("--", index):
            # A comment runs from "--" to the end of the line.
            newline = text.find("\n", index)
            index = len(text) if newline == -1 else newline
            spaced = True
            continue
        start = index
        if char in "(),":
            tokens.append(Token(char, char, start, spaced))
            index += 1
        elif char == '"':
            value, index = _read_string(text, start)
            tokens.append(Token("string", value, start, spaced))
        elif comparator := _read_comparator(text, start):
            tokens.append(Token("comparator", comparator, start, spaced))
            index += len(comparator)
        else:
            while index < len(text) and text[index] not in _WORD_DELIMITERS:
                index += 1
            if index == start:
                raise FilterError(f"unexpected character {char!r}", text, start)
            word = text[start:index]
            kind = "keyword" if word in KEYWORDS else "word"
            tokens.append(Token(kind, word, start, spaced))
        spaced = False
    tokens.append(Token("end", "", len(text), True))
    return tokens


def _read_comparator(text: str, start: int) -> str | None:
    for comparator in COMPARATORS:
        if text.startswith(comparator, start):
            return comparator
    return None


def _read_string(text: str, start: int) -> tuple[str, int]:
    characters: list[str] = []
    index = start + 1
    while index < len(text):
        char = text[index]
        if char == '"':
            return "".join(characters), index + 1
        if char == "\\" and index + 1 < len(text):
            escaped = text[index + 1]
            # An unknown escape keeps its backslash, so regular expressions
            # such as "\s+" reach the regex engine unchanged.
            characters.append(_ESCAPES.get(escaped, "\\" + escaped))
            index += 2
            continue
        characters.append(char)
        index += 1
    raise FilterError("unterminated quoted string", text, start)


# ---------------------------------------------------------------------------
# Syntax tree


@dataclass(frozen=True)
class Value:
    """A literal on the right of a comparison, or a global search term."""

    text: str
    quoted: bool
    position: int

    @property
    def is_wildcard(self) -> bool:
        return not self.quoted and self.text == "*"

    @property
    def is_null(self) -> bool:
        return not self.quoted and self.text == "NULL_VALUE"


@dataclass(frozen=True)
class And:
    children: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    children: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    child: Node


@dataclass(frozen=True)
class Comparison:
    """A ``path comparator value`` test. The value may join values with AND, OR, NOT."""

    path: tuple[str, ...]
    comparator: str
    value: Node
    position: int
    patterns: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class GlobalRestriction:
    """A bare value: matches when any field of the entry contains it."""

    value: Value


Node = And | Or | Not | Comparison | GlobalRestriction | FunctionCall | Value


# ---------------------------------------------------------------------------
# Parser


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.index = 0
        self.depth = 0

    def peek(self, offset: int = 0) -> Token:
        return self.tokens[min(self.index + offset, len(self.tokens) - 1)]

    def advance(self) -> Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def error(self, message: str, token: Token | None = None) -> FilterError:
        token = token or self.peek()
        return FilterError(message, self.text, token.position)

    def describe(self, token: Token) -> str:
        return "end of filter" if token.kind == "end" else repr(token.text)

    def parse(self) -> Node | None:
        if self.peek().kind == "end":
            return None
        node = self.expression(values=False)
        token = self.peek()
        if token.kind != "end":
            raise self.error(f"unexpected {self.describe(token)}", token)
        return node

    # expression := sequence { "AND" sequence }
    def expression(self, *, values: bool) -> Node:
        children = [self.sequence(values=values)]
        while self.peek().kind == "keyword" and self.peek().text == "AND":
            self.advance()
            children.append(self.sequence(values=values))
        return children[0] if len(children) == 1 else And(tuple(children))

    # sequence := factor { factor }, side by side meaning AND
    def sequence(self, *, values: bool) -> Node:
        children = [self.factor(values=values)]
        while self.starts_term(self.peek()):
            children.append(self.factor(values=values))
        return children[0] if len(children) == 1 else And(tuple(children))

    # factor := term { "OR" term }
    def factor(self, *, values: bool) -> Node:
        children = [self.term(values=values)]
        while self.peek().kind == "keyword" and self.peek().text == "OR":
            self.advance()
            children.append(self.term(values=values))
        return children[0] if len(children) == 1 else Or(tuple(children))

    def starts_term(self, token: Token) -> bool:
        if token.kind in ("word", "string", "("):
            return True
        return token.kind == "keyword" and token.text == "NOT"

    # term := ("NOT" | "-") term | "(" expression ")" | restriction
    def term(self, *, values: bool) -> Node:
        token = self.peek()
        if not self.opens_level(token):
            return self.nested_term(token, values=values)
        if self.depth >= MAX_NESTING_DEPTH:
            raise self.error(
                "the filter nests parentheses, NOT and '-' more than "
                f"{MAX_NESTING_DEPTH} levels deep",
                token,
            )
        self.depth += 1
        try:
            return self.nested_term(token, values=values)
        finally:
            self.depth -= 1

    def opens_level(self, token: Token) -> bool:
        if token.kind == "(":
            return True
        if token.kind == "keyword":
            return token.text == "NOT"
        return token.kind == "word" and token.text.startswith("-")

    def nested_term(self, token: Token, *, values: bool) -> Node:
        if token.kind == "keyword" and token.text == "NOT":
            self.advance()
            if not self.starts_term(self.peek()):
                found = self.describe(self.peek())
                raise self.error(f"expected an expression after NOT, found {found}")
            return Not(self.term(values=values))
        if token.kind == "word" and token.text.startswith("-"):
            return Not(self.negated_term(token, values=values))
        if token.kind == "(":
            self.advance()
            if self.peek().kind == ")":
                raise self.error("empty parentheses")
            node = self.expression(values=values)
            closing = self.peek()
            if closing.kind != ")":
                raise self.error(
                    f"expected ')' to match '(', found {self.describe(closing)}",
                    closing,
                )
            self.advance()
            return node
        if token.kind in ("word", "string"):
            return self.value() if values else self.restriction()
        expected = "a value" if values else "an expression"
        raise self.error(f"expected {expected}, found {self.describe(token)}", token)

    def negated_term(self, token: Token, *, values: bool) -> Node:
        rest = token.text[1:]
        if rest:
            # Split "-word" into the minus and the word, keeping its position.
            self.tokens[self.index] = Token(
                "keyword" if rest in KEYWORDS else "word",
                rest,
                token.position + 1,
                False,
            )
        else:
            following = self.peek(1)
            if following.spaced or not self.starts_term(following):
                raise self.error("expected an expression right after '-'", token)
            self.advance()
        return self.term(values=values)

    def adjacent_run(self) -> list[Token]:
        """Consume words and strings written with no space between them."""
        run = [self.advance()]
        while self.peek().kind in ("word", "string") and not self.peek().spaced:
            run.append(self.advance())
        return run

    def value(self) -> Value:
        run = self.adjacent_run()
        quoted = any(token.kind == "string" for token in run)
        return Value("".join(token.text for token in run), quoted, run[0].position)

    def restriction(self) -> Node:
        start = self.peek()
        if (
            start.kind == "word"
            and self.peek(1).kind == "("
            and not self.peek(1).spaced
        ):
            return self.function_call()
        run = self.adjacent_run()
        comparator = self.peek()
        if comparator.kind != "comparator":
            quoted = any(token.kind == "string" for token in run)
            text = "".join(token.text for token in run)
            return GlobalRestriction(Value(text, quoted, start.position))
        path = self.field_path(run)
        self.advance()
        value = self.comparison_value(comparator)
        comparison = Comparison(path, comparator.text, value, start.position)
        self.check_comparison(comparison)
        return comparison

    def function_call(self) -> Node:
        name = self.advance()
        self.advance()
        arguments: list[Argument] = []
        if self.peek().kind == ")":
            self.advance()
            return build_call(name.text, arguments, name.position, self.fail)
        while True:
            token = self.peek()
            if token.kind not in ("word", "string"):
                raise self.error(
                    f"expected a function argument, found {self.describe(token)}", token
                )
            arguments.append(self.argument())
            separator = self.advance()
            if separator.kind == ")":
                return build_call(name.text, arguments, name.position, self.fail)
            if separator.kind != ",":
                raise self.error(
                    f"expected ',' or ')' in {name.text}(), "
                    f"found {self.describe(separator)}",
                    separator,
                )

    def argument(self) -> Argument:
        run = self.adjacent_run()
        if len(run) == 1 and run[0].kind == "string":
            return Argument(None, run[0].text, run[0].position)
        if len(run) == 1 and _as_number(run[0].text) is not None:
            return Argument(None, run[0].text, run[0].position)
        return Argument(self.field_path(run), None, run[0].position)

    def fail(self, message: str, position: int) -> FilterError:
        return FilterError(message, self.text, position)

    def field_path(self, run: list[Token]) -> tuple[str, ...]:
        segments: list[str] = []
        expect_segment = True
        for token in run:
            if token.kind == "string":
                if not expect_segment:
                    raise self.error("expected '.' between field path segments", token)
                segments.append(token.text)
                expect_segment = False
                continue
            parts = token.text.split(".")
            if not expect_segment:
                if parts[0] != "":
                    raise self.error("expected '.' between field path segments", token)
                parts = parts[1:]
            for offset, part in enumerate(parts):
                is_last = offset == len(parts) - 1
                if part == "" and is_last and token is not run[-1]:
                    expect_segment = True
                    break
                if part == "":
                    raise self.error(
                        f"empty segment in field path {token.text!r}", token
                    )
                segments.append(part)
                expect_segment = False
        if expect_segment:
            raise self.error("field path ends with '.'", run[-1])
        segments[0] = _SNAKE_TO_CAMEL.get(segments[0], segments[0])
        self.check_path(segments, run[0])
        return tuple(segments)

    def check_path(self, segments: list[str], token: Token) -> None:
        top = segments[0]
        if top in SCALAR_FIELDS:
            if len(segments) > 1:
                raise self.error(
                    f"field {top!r} has no subfield {segments[1]!r}", token
                )
            return
        if top not in STRUCTURED_FIELDS:
            raise self.error(
                f"unknown field {top!r}; a LogEntry has "
                + ", ".join(sorted(SCALAR_FIELDS | STRUCTURED_FIELDS)),
                token,
            )

    def comparison_value(self, comparator: Token) -> Node:
        token = self.peek()
        if token.kind == "(":
            return self.term(values=True)
        if token.kind in ("word", "string"):
            return self.value()
        raise self.error(
            f"expected a value after {comparator.text!r}, found {self.describe(token)}",
            token,
        )

    def check_comparison(self, comparison: Comparison) -> None:
        """Reject values that cannot be compared with the field, and compile regexes."""
        for value in _values_of(comparison.value):
            if value.is_wildcard and comparison.comparator != ":":
                raise FilterError(
                    "'*' is only allowed after ':' (the presence test)",
                    self.text,
                    value.position,
                )
            if comparison.comparator in ("=~", "!~"):
                comparison.patterns[value.text] = self.compile_pattern(value)
                continue
            self.check_value_kind(comparison, value)

    def compile_pattern(self, value: Value) -> Any:
        try:
            return re2.compile(value.text, _RE2_OPTIONS)
        except re2.error as error:
            reason = error.args[0] if error.args else ""
            if isinstance(reason, bytes):
                reason = reason.decode("utf-8", "replace")
            raise FilterError(
                f"invalid regular expression {value.text!r} (RE2 syntax): {reason}",
                self.text,
                value.position,
            ) from None

    def check_value_kind(self, comparison: Comparison, value: Value) -> None:
        top = comparison.path[0]
        if value.is_wildcard or comparison.comparator == ":":
            return
        if top == "severity" and severity_level(value.text) is None:
            raise FilterError(
                f"invalid severity {value.text!r}; use a level name such as ERROR "
                "or a number",
                self.text,
                value.position,
            )
        if top in TIMESTAMP_FIELDS and parse_timestamp(value.text) is None:
            raise FilterError(
                f"invalid timestamp {value.text!r}; write an RFC 3339 time in "
                'double quotes, e.g. "2024-05-01T12:00:00Z"',
                self.text,
                value.position,
            )


def _values_of(node: Node) -> Iterator[Value]:
    if isinstance(node, Value):
        yield node
    elif isinstance(node, And | Or):
        for child in node.children:
            yield from _values_of(child)
    elif isinstance(node, Not):
        yield from _values_of(node.child)


# ---------------------------------------------------------------------------
# Values


@lru_cache(maxsize=4096)
def parse_timestamp(text: str) -> int | None:
    """Return the RFC 3339 instant ``text`` as nanoseconds since the epoch.

    A date alone means midnight UTC; a time without an offset is taken as UTC.
    """
    match = _RFC3339.match(text.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    try:
        moment = datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            tzinfo=UTC,
        )
    except ValueError:
        return None
    seconds = calendar.timegm(moment.utctimetuple())
    if offset and offset not in ("Z", "z"):
        sign = 1 if offset[0] == "+" else -1
        seconds -= sign * (int(offset[1:3]) * 3600 + int(offset[4:6]) * 60)
    nanos = int((fraction or "").ljust(9, "0")) if fraction else 0
    return seconds * 1_000_000_000 + nanos


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# ---------------------------------------------------------------------------
# Evaluation


def evaluate(node: Node, entry: dict[str, Any]) -> bool:
    """Return whether the LogEntry in JSON form ``entry`` matches ``node``."""
    if isinstance(node, And):
        return all(evaluate(child, entry) for child in node.children)
    if isinstance(node, Or):
        return any(evaluate(child, entry) for child in node.children)
    if isinstance(node, Not):
        return not evaluate(node.child, entry)
    if isinstance(node, Comparison):
        return _evaluate_comparison(node, node.value, entry)
    if isinstance(node, GlobalRestriction):
        needle = node.value.text.casefold()
        return any(needle in leaf.casefold() for leaf in string_leaves(entry))
    if isinstance(node, LogIdCall | SearchCall | SampleCall | IpInNetCall):
        return node.matches(entry)
    raise TypeError(f"a bare value cannot be evaluated on its own: {node!r}")


def _evaluate_comparison(
    comparison: Comparison, value: Node, entry: dict[str, Any]
) -> bool:
    # The right-hand side may itself be a boolean expression of values:
    # resource.type = ("gce_instance" OR "k8s_container").
    if isinstance(value, And):
        return all(
            _evaluate_comparison(comparison, child, entry) for child in value.children
        )
    if isinstance(value, Or):
        return any(
            _evaluate_comparison(comparison, child, entry) for child in value.children
        )
    if isinstance(value, Not):
        return not _evaluate_comparison(comparison, value.child, entry)
    assert isinstance(value, Value)

    # AIP-160: "a != b" is "NOT a = b", so it also matches entries without the field.
    if comparison.comparator == "!=":
        return not _compare_field(comparison, "=", value, entry)
    if comparison.comparator == "!~":
        return not _compare_field(comparison, "=~", value, entry)
    return _compare_field(comparison, comparison.comparator, value, entry)


def _compare_field(
    comparison: Comparison, comparator: str, value: Value, entry: dict[str, Any]
) -> bool:
    leaves = field_leaves(entry, comparison.path)
    if comparator == ":" and value.is_wildcard:
        return leaves is not MISSING
    if leaves is MISSING:
        return False
    if comparator == "=~":
        pattern = comparison.patterns[value.text]
        return any(
            not isinstance(leaf, dict) and pattern.search(_as_text(leaf))
            for leaf in leaves
        )
    return any(
        _compare_leaf(comparison.path, comparator, leaf, value) for leaf in leaves
    )


def _compare_leaf(
    path: tuple[str, ...], comparator: str, leaf: Any, value: Value
) -> bool:
    if comparator == ":":
        needle = value.text.casefold()
        if isinstance(leaf, dict):
            return any(needle in text.casefold() for text in string_leaves(leaf))
        return leaf is not None and needle in _as_text(leaf).casefold()
    if isinstance(leaf, dict):
        return False
    if value.is_null:
        return comparator == "=" and leaf is None
    if leaf is None:
        return False

    top = path[0]
    left: Any
    right: Any
    if top == "severity":
        left, right = severity_level(_as_text(leaf)), severity_level(value.text)
    elif top in TIMESTAMP_FIELDS:
        left, right = parse_timestamp(_as_text(leaf)), parse_timestamp(value.text)
    elif top == "logName":
        left = normalize_log_name(_as_text(leaf)).casefold()
        right = normalize_log_name(value.text).casefold()
    else:
        left, right = _as_number(leaf), _as_number(value.text)
        if left is None or right is None:
            # String comparisons ignore case, as the reference states for the
            # whole language apart from regular expressions.
            left, right = _as_text(leaf).casefold(), value.text.casefold()
    if left is None or right is None:
        return False
    return _ORDERINGS[comparator](left, right)


_ORDERINGS = {
    "=": lambda left, right: left == right,
    "<": lambda left, right: left < right,
    "<=": lambda left, right: left <= right,
    ">": lambda left, right: left > right,
    ">=": lambda left, right: left >= right,
}


# ---------------------------------------------------------------------------
# Compiled filters


@dataclass(frozen=True)
class TimestampRange:
    """Inclusive bounds in ns on the ``timestamp`` of every matching entry."""

    lower: int | None = None
    upper: int | None = None


@dataclass(frozen=True)
class Filter:
    """A parsed filter. The empty filter matches every entry."""

    text: str
    root: Node | None

    def matches(self, entry: dict[str, Any]) -> bool:
        return self.root is None or evaluate(self.root, entry)

    def timestamp_range(self) -> TimestampRange:
        """Bound ``timestamp`` from the top-level AND terms that restrict it.

        The bounds may be wider than the filter, never narrower, so a store can
        use them to skip rows and still run :meth:`matches` on the rest.
        """
        if self.root is None:
            return TimestampRange()
        terms = self.root.children if isinstance(self.root, And) else (self.root,)
        lower: int | None = None
        upper: int | None = None
        for term in terms:
            if not (
                isinstance(term, Comparison)
                and term.path == ("timestamp",)
                and isinstance(term.value, Value)
            ):
                continue
            instant = parse_timestamp(term.value.text)
            if instant is None:
                continue
            if term.comparator in (">", ">=", "="):
                lower = instant if lower is None else max(lower, instant)
            if term.comparator in ("<", "<=", "="):
                upper = instant if upper is None else min(upper, instant)
        return TimestampRange(lower, upper)


def compile_filter(text: str) -> Filter:
    """Parse ``text``, raising :class:`FilterError` with the position of a mistake."""
    return Filter(text, _Parser(text).parse())
