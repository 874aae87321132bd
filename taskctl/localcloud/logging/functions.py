"""The Logging query language's functions: log_id, SEARCH, sample and ip_in_net."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from taskctl.localcloud.logging.values import (
    MISSING,
    field_leaves,
    normalize_log_name,
    string_leaves,
)

# SEARCH splits text into tokens at anything that is not a letter or digit.
# NOTE: Cloud Logging tokenizes with its own analyzer, which may keep some
# punctuation inside tokens, so some SEARCH results can differ from Google's.
_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)


@dataclass(frozen=True)
class Argument:
    """A function argument: a field path or a literal (quoted text or a number)."""

    path: tuple[str, ...] | None
    literal: str | None
    position: int


@dataclass(frozen=True)
class LogIdCall:
    """``log_id("ID")``: entries whose log name ends in that log ID."""

    log_id: str

    def matches(self, entry: dict[str, Any]) -> bool:
        log_name = normalize_log_name(str(entry.get("logName", "")))
        suffix = normalize_log_name("/logs/" + self.log_id)
        return log_name.casefold().endswith(suffix.casefold())


@dataclass(frozen=True)
class SearchCall:
    """``SEARCH([field,] "query")``: every query term is found as whole tokens.

    A term in backticks must appear as written, ignoring case. Other terms are
    split into tokens, which must appear next to each other in one value.
    """

    path: tuple[str, ...] | None
    terms: tuple[tuple[str, bool], ...]  # (term, exact)

    def matches(self, entry: dict[str, Any]) -> bool:
        if self.path is None:
            scope: Any = entry
        else:
            scope = field_leaves(entry, self.path)
            if scope is MISSING:
                return False
        texts = [text.casefold() for text in string_leaves(scope)]
        token_lists = [_TOKEN.findall(text) for text in texts]
        return all(
            _contains_term(texts, token_lists, term, exact)
            for term, exact in self.terms
        )


@dataclass(frozen=True)
class SampleCall:
    """``sample(field, fraction)``: a stable pseudo-random share of the entries."""

    path: tuple[str, ...]
    fraction: float

    def matches(self, entry: dict[str, Any]) -> bool:
        leaves = field_leaves(entry, self.path)
        if leaves is MISSING:
            return False
        digest = hashlib.sha256(str(leaves[0]).encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.fraction


@dataclass(frozen=True)
class IpInNetCall:
    """``ip_in_net(field, "CIDR")``: the field contains an IP address in that network."""

    path: tuple[str, ...]
    network: ipaddress.IPv4Network | ipaddress.IPv6Network

    def matches(self, entry: dict[str, Any]) -> bool:
        leaves = field_leaves(entry, self.path)
        if leaves is MISSING:
            return False
        for leaf in leaves:
            try:
                address = ipaddress.ip_address(str(leaf).strip())
            except ValueError:
                continue
            if address.version == self.network.version and address in self.network:
                return True
        return False


FunctionCall = LogIdCall | SearchCall | SampleCall | IpInNetCall
Fail = Callable[[str, int], Exception]


def build_call(
    name: str, arguments: Sequence[Argument], position: int, fail: Fail
) -> FunctionCall:
    """Check ``arguments`` for function ``name`` and return its node.

    ``fail(message, position)`` builds the exception to raise for a mistake.
    """
    builders = {
        "log_id": _build_log_id,
        "SEARCH": _build_search,
        "sample": _build_sample,
        "ip_in_net": _build_ip_in_net,
    }
    builder = builders.get(name)
    if builder is None:
        raise fail(
            f"unknown function {name!r}; use one of " + ", ".join(sorted(builders)),
            position,
        )
    return builder(arguments, position, fail)


def _build_log_id(
    arguments: Sequence[Argument], position: int, fail: Fail
) -> FunctionCall:
    if len(arguments) != 1 or arguments[0].literal is None:
        raise fail('log_id() takes one quoted log ID, e.g. log_id("stdout")', position)
    return LogIdCall(arguments[0].literal)


def _build_search(
    arguments: Sequence[Argument], position: int, fail: Fail
) -> FunctionCall:
    if len(arguments) == 1 and arguments[0].literal is not None:
        path, query = None, arguments[0]
    elif len(arguments) == 2 and arguments[0].path and arguments[1].literal is not None:
        path, query = arguments[0].path, arguments[1]
    else:
        raise fail(
            "SEARCH() takes a quoted query, optionally after a field: "
            'SEARCH(textPayload, "timeout")',
            position,
        )
    terms = _search_terms(query.literal or "")
    if not terms:
        raise fail("SEARCH() needs a non-empty query", query.position)
    return SearchCall(path, terms)


def _build_sample(
    arguments: Sequence[Argument], position: int, fail: Fail
) -> FunctionCall:
    usage = (
        "sample() takes a field and a fraction from 0 to 1, e.g. sample(insertId, 0.25)"
    )
    if len(arguments) != 2 or not arguments[0].path or arguments[1].literal is None:
        raise fail(usage, position)
    try:
        fraction = float(arguments[1].literal)
    except ValueError:
        raise fail(usage, arguments[1].position) from None
    if not 0 <= fraction <= 1:
        raise fail(usage, arguments[1].position)
    return SampleCall(arguments[0].path, fraction)


def _build_ip_in_net(
    arguments: Sequence[Argument], position: int, fail: Fail
) -> FunctionCall:
    usage = 'ip_in_net() takes a field and a quoted network, e.g. ip_in_net(x, "10.0.0.0/8")'
    if len(arguments) != 2 or not arguments[0].path or arguments[1].literal is None:
        raise fail(usage, position)
    try:
        network = ipaddress.ip_network(arguments[1].literal, strict=False)
    except ValueError:
        raise fail(
            f"invalid network {arguments[1].literal!r} in ip_in_net(); "
            'use CIDR notation such as "10.0.0.0/8"',
            arguments[1].position,
        ) from None
    return IpInNetCall(arguments[0].path, network)


def _search_terms(query: str) -> tuple[tuple[str, bool], ...]:
    terms: list[tuple[str, bool]] = []
    for match in re.finditer(r"`([^`]*)`|(\S+)", query):
        exact, plain = match.groups()
        if exact is not None:
            if exact.strip():
                terms.append((exact.casefold(), True))
        elif _TOKEN.search(plain):
            terms.append((plain.casefold(), False))
    return tuple(terms)


def _contains_term(
    texts: list[str], token_lists: list[list[str]], term: str, exact: bool
) -> bool:
    if exact:
        return any(term in text for text in texts)
    term_tokens = _TOKEN.findall(term)
    width = len(term_tokens)
    return any(
        tokens[start : start + width] == term_tokens
        for tokens in token_lists
        for start in range(len(tokens) - width + 1)
    )
