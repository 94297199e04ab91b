"""The subset of Go's text/template that CoreDNS's template plugin documents, parsed once at config time.

Supported: text with `{{ pipeline }}` actions (`{{-`/`-}}` trim spaces), fields `.Name .Zone .Class
.Type .Message .Question .Remote .Match .Group.NAME`, the functions `index`, `parseInt`, `printf`,
`print`, `len`, string/number literals, `( ... )` and `|` pipes. Anything else (if/range/with/define,
unknown fields or functions) is a TemplateError with the offset where it was found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable


class TemplateError(ValueError):
    def __init__(self, offset: int, message: str):
        super().__init__(message)
        self.offset = offset
        self.message = message


FIELDS = ("Name", "Zone", "Class", "Type", "Message", "Question", "Remote", "Match", "Group")
KEYWORDS = ("if", "else", "end", "range", "with", "define", "template", "block", "break", "continue", "nil")

_TOKEN = re.compile(r"""\s*(?:
    (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)
  | (?P<string>"(?:[^"\\]|\\.)*"|`[^`]*`)
  | (?P<number>-?\d+)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[()|])
  | (?P<var>\$[A-Za-z0-9_]*)
)""", re.X)


@dataclass
class _Node:
    offset: int


@dataclass
class _Const(_Node):
    value: Any


@dataclass
class _Field(_Node):
    path: tuple[str, ...]


@dataclass
class _Call(_Node):
    name: str
    args: list


def _printf(fmt: str, *args) -> str:
    out = re.sub(r"%v", "%s", fmt)
    try:
        return out % args
    except (TypeError, ValueError) as exc:
        raise ValueError(f"printf {fmt!r}: {exc}") from None


def _parse_int(text, base, bits) -> int:
    value = int(str(text), int(base))
    if value < 0 or value >= 1 << int(bits):
        raise ValueError(f"parseInt {text!r}: out of range for {bits} bits")
    return value


def _index(value, *keys):
    for key in keys:
        try:
            value = value[key]
        except (IndexError, KeyError, TypeError):
            raise ValueError(f"index {key!r}: out of range") from None
    return value


FUNCS: dict[str, tuple[int, int | None, Callable]] = {
    "index": (2, None, _index),
    "parseInt": (3, 3, _parse_int),
    "printf": (1, None, _printf),
    "print": (0, None, lambda *a: "".join(str(x) for x in a)),
    "len": (1, 1, len),
}


class Template:
    """A parsed template: render(data) -> str. `groups` lists the .Group.NAME names it uses,
    `indexes` the literal `index .Match N` numbers (both checked against the match regexes)."""

    def __init__(self, text: str):
        self.text = text
        self.parts: list = []
        self.groups: list[tuple[str, int]] = []
        self.indexes: list[tuple[int, int]] = []
        self._parse()

    def _parse(self) -> None:
        text, pos = self.text, 0
        while pos < len(text):
            start = text.find("{{", pos)
            if start < 0:
                self.parts.append(text[pos:])
                break
            end = text.find("}}", start + 2)
            if end < 0:
                raise TemplateError(start, "'{{' without a closing '}}'")
            literal = text[pos:start]
            inner_start, inner_end = start + 2, end
            if text.startswith("-", inner_start) and inner_start + 1 < len(text) and text[inner_start + 1] in " \t\n":
                literal = literal.rstrip()
                inner_start += 1
            trim_after = False
            if inner_end - 1 > inner_start and text[inner_end - 1] == "-" and text[inner_end - 2] in " \t\n":
                trim_after = True
                inner_end -= 1
            self.parts.append(literal)
            inner = text[inner_start:inner_end]
            if inner.strip().startswith("/*"):
                pos = end + 2
                continue
            self.parts.append(self._pipeline(inner, inner_start))
            pos = end + 2
            if trim_after:
                while pos < len(text) and text[pos] in " \t\n":
                    pos += 1

    def _tokens(self, inner: str, base: int) -> list[tuple[str, str, int]]:
        out, pos = [], 0
        while pos < len(inner):
            if not inner[pos:].strip():
                break
            m = _TOKEN.match(inner, pos)
            if m is None or m.end() == pos:
                off = base + pos + (len(inner[pos:]) - len(inner[pos:].lstrip()))
                raise TemplateError(off, f"unexpected {inner[pos:].strip()[:10]!r} in template action")
            kind = m.lastgroup
            off = base + m.start(kind)
            out.append((kind, m.group(kind), off))
            pos = m.end()
        if not out:
            raise TemplateError(base, "empty template action")
        return out

    def _pipeline(self, inner: str, base: int):
        tokens = self._tokens(inner, base)
        node, rest = self._parse_pipe(tokens, 0)
        if rest != len(tokens):
            kind, value, off = tokens[rest]
            raise TemplateError(off, f"unexpected {value!r} in template action")
        return node

    def _parse_pipe(self, tokens, i):
        node, i = self._parse_command(tokens, i)
        while i < len(tokens) and tokens[i][1] == "|":
            nxt, i = self._parse_command(tokens, i + 1)
            if not isinstance(nxt, _Call):
                raise TemplateError(nxt.offset, "only a function can follow '|'")
            nxt.args.append(node)
            self._check_call(nxt)
            node = nxt
        return node, i

    def _parse_command(self, tokens, i):
        if i >= len(tokens):
            raise TemplateError(tokens[-1][2], "missing operand in template action")
        kind, value, off = tokens[i]
        if kind == "ident":
            if value in KEYWORDS:
                raise TemplateError(off, f"{value!r} is not supported in kdns templates (only values: fields, "
                                         f"index, parseInt, printf, print, len)")
            if value not in FUNCS:
                raise TemplateError(off, f"unknown function {value!r} (kdns supports: {', '.join(FUNCS)})")
            args, i = [], i + 1
            while i < len(tokens) and tokens[i][1] not in ("|", ")"):
                arg, i = self._parse_operand(tokens, i)
                args.append(arg)
            call = _Call(off, value, args)
            if i < len(tokens) and tokens[i][1] == "|":
                return call, i  # the pipe appends an argument; checked there
            self._check_call(call)
            return call, i
        node, i = self._parse_operand(tokens, i)
        return node, i

    def _check_call(self, call: _Call) -> None:
        lo, hi, _ = FUNCS[call.name]
        if len(call.args) < lo or (hi is not None and len(call.args) > hi):
            raise TemplateError(call.offset, f"{call.name}: wrong number of arguments ({len(call.args)})")
        if call.name == "index" and isinstance(call.args[0], _Field) and call.args[0].path == ("Match",) \
                and isinstance(call.args[1], _Const) and isinstance(call.args[1].value, int):
            self.indexes.append((call.args[1].value, call.args[1].offset))

    def _parse_operand(self, tokens, i):
        kind, value, off = tokens[i]
        if kind == "field":
            path = tuple(p for p in value.split(".") if p)
            if path and path[0] not in FIELDS:
                raise TemplateError(off, f"unknown field .{path[0]} (kdns templates have: "
                                         f"{', '.join('.' + f for f in FIELDS)})")
            if path and path[0] == "Group":
                if len(path) != 2:
                    raise TemplateError(off, ".Group needs a group name: .Group.NAME")
                self.groups.append((path[1], off))
            elif len(path) > 1:
                raise TemplateError(off, f".{path[0]} has no field .{path[1]}")
            return _Field(off, path), i + 1
        if kind == "string":
            text = value[1:-1] if value[0] == "`" else bytes(value[1:-1], "utf-8").decode("unicode_escape")
            return _Const(off, text), i + 1
        if kind == "number":
            return _Const(off, int(value)), i + 1
        if kind == "punct" and value == "(":
            node, j = self._parse_pipe(tokens, i + 1)
            if j >= len(tokens) or tokens[j][1] != ")":
                raise TemplateError(off, "'(' without a closing ')'")
            return node, j + 1
        if kind == "ident":
            if value in FUNCS:
                return _Call(off, value, []), i + 1  # a function without arguments
            raise TemplateError(off, f"unknown function {value!r} (kdns supports: {', '.join(FUNCS)})")
        if kind == "var":
            raise TemplateError(off, f"template variables ({value}) are not supported in kdns templates")
        raise TemplateError(off, f"unexpected {value!r} in template action")

    def render(self, data: dict) -> str:
        """The text for these values. ValueError when a function fails (bad parseInt input, index out of range)."""
        out = []
        for part in self.parts:
            out.append(part if isinstance(part, str) else _str(_eval(part, data)))
        return "".join(out)


def _eval(node, data: dict):
    if isinstance(node, _Const):
        return node.value
    if isinstance(node, _Field):
        value: Any = data
        for key in node.path:
            if not isinstance(value, dict) or key not in value:
                return ""  # a .Group name that did not take part in this match: Go prints the empty string
            value = value[key]
        return value
    args = [_eval(a, data) for a in node.args]
    return FUNCS[node.name][2](*args)


def _str(value) -> str:
    if isinstance(value, list):
        return "[" + " ".join(_str(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_str(v)}" for k, v in sorted(value.items())) + "]"
    return str(value)
