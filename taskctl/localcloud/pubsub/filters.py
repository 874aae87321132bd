"""Subscription filters on message attributes.

The grammar follows Pub/Sub's filter language: ``attributes.KEY = "v"``,
``attributes.KEY != "v"``, ``attributes:KEY`` (the key exists),
``hasPrefix(attributes.KEY, "p")``, ``NOT`` or ``-`` before a term, ``AND`` and
``OR`` (which cannot be mixed without parentheses) and parentheses. A key is an
identifier or a double-quoted string.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from taskctl.localcloud.errors import invalid_argument

MAX_FILTER_BYTES = 256

_TOKEN = re.compile(
    r'\s*(?:(?P<string>"(?:[^"\\]|\\.)*")|(?P<op>!=|=|:|\(|\)|,|-|\.)'
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_\-]*))"
)

Predicate = Callable[[Mapping[str, str]], bool]


@dataclass(frozen=True)
class Filter:
    """A parsed filter expression."""

    text: str
    predicate: Predicate

    def matches(self, attributes: Mapping[str, str]) -> bool:
        return self.predicate(attributes)


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens = []
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if match is None:
            raise invalid_argument(
                f"invalid filter {text!r}: unexpected character at offset {position}"
            )
        kind = match.lastgroup or ""
        value = match.group(kind)
        if kind == "string":
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        tokens.append((kind, value))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.position = 0

    def error(self, detail: str) -> Exception:
        return invalid_argument(f"invalid filter {self.text!r}: {detail}")

    def peek(self) -> tuple[str, str] | None:
        if self.position < len(self.tokens):
            return self.tokens[self.position]
        return None

    def take(self, kind: str, value: str | None = None) -> str:
        token = self.peek()
        if (
            token is None
            or token[0] != kind
            or (value is not None and token[1] != value)
        ):
            expected = value or kind
            found = "the end" if token is None else repr(token[1])
            raise self.error(f"expected {expected}, found {found}")
        self.position += 1
        return token[1]

    def at_word(self, word: str) -> bool:
        token = self.peek()
        return token is not None and token[0] == "word" and token[1] == word

    def expression(self) -> Predicate:
        first = self.term()
        operator = None
        terms = [first]
        while self.at_word("AND") or self.at_word("OR"):
            word = self.take("word")
            if operator is not None and word != operator:
                raise self.error("AND and OR cannot be mixed without parentheses")
            operator = word
            terms.append(self.term())
        if operator == "AND":
            return lambda attributes: all(term(attributes) for term in terms)
        if operator == "OR":
            return lambda attributes: any(term(attributes) for term in terms)
        return first

    def term(self) -> Predicate:
        if self.at_word("NOT") or self.peek() == ("op", "-"):
            self.position += 1
            inner = self.term()
            return lambda attributes: not inner(attributes)
        if self.peek() == ("op", "("):
            self.position += 1
            inner = self.expression()
            self.take("op", ")")
            return inner
        if self.at_word("hasPrefix"):
            self.position += 1
            self.take("op", "(")
            key = self.attribute_key()
            self.take("op", ",")
            prefix = self.take("string")
            self.take("op", ")")
            return lambda attributes: (
                attributes.get(key, None) is not None
                and (attributes[key].startswith(prefix))
            )
        if self.at_word("attributes"):
            return self.comparison()
        token = self.peek()
        raise self.error(f"unexpected {'the end' if token is None else repr(token[1])}")

    def attribute_key(self) -> str:
        self.take("word", "attributes")
        self.take("op", ".")
        return self.key()

    def key(self) -> str:
        token = self.peek()
        if token is None or token[0] not in ("word", "string"):
            raise self.error("expected an attribute key")
        self.position += 1
        return token[1]

    def comparison(self) -> Predicate:
        self.take("word", "attributes")
        token = self.peek()
        if token == ("op", ":"):
            self.position += 1
            key = self.key()
            return lambda attributes: key in attributes
        self.take("op", ".")
        key = self.key()
        token = self.peek()
        if token == ("op", "="):
            self.position += 1
            value = self.take("string")
            return lambda attributes: attributes.get(key) == value
        if token == ("op", "!="):
            self.position += 1
            value = self.take("string")
            # NOTE: a message without the attribute matches; Google's filter
            # documentation does not say how != treats a missing attribute.
            return lambda attributes: attributes.get(key) != value
        raise self.error(f"expected = or != after attributes.{key}")


def parse(text: str) -> Filter:
    """Parse ``text`` or raise INVALID_ARGUMENT naming what is wrong."""
    if len(text.encode()) > MAX_FILTER_BYTES:
        raise invalid_argument(
            f"invalid filter: {len(text.encode())} bytes is over the limit of "
            f"{MAX_FILTER_BYTES} bytes"
        )
    parser = _Parser(text)
    predicate = parser.expression()
    if parser.peek() is not None:
        raise parser.error(f"unexpected {parser.peek()[1]!r}")  # type: ignore[index]
    return Filter(text, predicate)
