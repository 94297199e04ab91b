"""Kubernetes label selectors (`app=web,tier!=db,env in (a,b),!legacy`) parsed once, matched many times."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_VALUE = r"[A-Za-z0-9]?(?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
_SET_RE = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s+\(\s*([^)]*)\)\s*$")
_CMP_RE = re.compile(rf"^\s*({_KEY})\s*(==|=|!=)\s*({_VALUE})\s*$")
_EXISTS_RE = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")


class SelectorError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str  # in, notin, exists, !exists
    values: frozenset

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        if self.op == "in":
            return labels.get(self.key) in self.values
        return self.key not in labels or labels[self.key] not in self.values  # notin


@dataclass(frozen=True, slots=True)
class LabelSelector:
    text: str
    requirements: tuple[Requirement, ...]

    def matches(self, labels: Mapping[str, str] | tuple) -> bool:
        if isinstance(labels, tuple):
            labels = dict(labels)
        return all(r.matches(labels) for r in self.requirements)


def _split(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"unbalanced ')' in selector {text!r}")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise SelectorError(f"unbalanced '(' in selector {text!r}")
    parts.append("".join(cur))
    return parts


def parse_selector(text: str) -> LabelSelector:
    reqs = []
    if text.strip():
        for part in _split(text):
            if m := _SET_RE.match(part):
                values = [v.strip() for v in m.group(3).split(",")]
                if not all(re.fullmatch(_VALUE, v) for v in values) or values == [""]:
                    raise SelectorError(f"bad value list in {part.strip()!r}")
                reqs.append(Requirement(m.group(1), m.group(2), frozenset(values)))
            elif m := _CMP_RE.match(part):
                op = "notin" if m.group(2) == "!=" else "in"
                reqs.append(Requirement(m.group(1), op, frozenset([m.group(3)])))
            elif m := _EXISTS_RE.match(part):
                reqs.append(Requirement(m.group(2), "!exists" if m.group(1) else "exists", frozenset()))
            else:
                raise SelectorError(f"cannot parse requirement {part.strip()!r} in selector {text!r}")
    return LabelSelector(text, tuple(reqs))
