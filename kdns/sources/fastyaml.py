"""Manifest documents read by yaml-rs (Rust, ~5x faster than libyaml) where it reads them as PyYAML does.

kdns reads manifests with PyYAML's safe schema (YAML 1.1: `yes`/`on` are booleans, `0123` is octal,
as kubectl's go-yaml v2 reads them too). yaml-rs implements YAML 1.2, which reads some plain scalars
otherwise, and has no node line numbers. So a file takes this path only when nothing in it can read
differently: `documents()` returns None (the caller then uses PyYAML) for any file with anchors,
aliases, tags, directives, merge keys, complex keys, escapes, tabs, unusual characters, very deep
nesting, flow collections that go on past their line or have a collection as a key, block scalars
that are empty or keep their line breaks, or a plain scalar that YAML 1.1 and 1.2 resolve
differently (yes/no/on/off, numbers with leading zeros, underscores, exponents or colons, leading
dots, dates, 19+ digits), and for anything yaml-rs rejects. The check is on the text and errs towards PyYAML: a quoted "yes" sends the file
there too. tests/test_fastyaml.py compares both readers on the tests' manifests, generated clusters
and fuzzed text.
"""

from __future__ import annotations

import re
from typing import Any

_parser: list = []  # [yaml_rs module or None], loaded by the first manifest read: kdns on the API never needs it


def _yaml_rs():
    """yaml-rs, imported on first use (~5 MiB resident once loaded); None where its wheel is missing."""
    if not _parser:
        try:
            import yaml_rs
        except ImportError:  # pragma: no cover - a platform without its wheel: PyYAML reads everything
            yaml_rs = None
        _parser.append(yaml_rs)
    return _parser[0]

# Each check starts with a character class: the regex engine then skips the rest of the text fast.
# "(?<=[\s\[{,].)" after the first character: it begins a plain scalar (after a space, a line break
# or a flow indicator; risky() puts a line break before the text, so the first line counts too).
_END = r"(?=[\s,\[\]{}:#]|\Z)"  # where a plain scalar can end
_DIGITS = (r"(?:[0-9_]*(?:\.[0-9_]*)?[eE_]|[0-9]{18}|[0-9]{3}-[0-9]"  # exponent, underscore, 19+ digits, a date
           r"|[0-9_]*(?::[0-5]?[0-9])+(?:[.\s,\]}]|:\s|:\Z|\Z))")  # sexagesimal (YAML 1.1: 1:20 is 80)
# (characters at least one of which the text must hold for the check to find anything, or "" for
# always; each regex scan costs ~50 ms on 20 MB), the check
_CHECKS = [(trigger, re.compile(p)) for trigger, p in (
    ("", r"\n(?:%|\.\.\.|[ \-?:]{500})"),  # a directive; a document end marker (1.2 allows a bare
    # document after it, PyYAML does not); nesting near libyaml's limit of 1000
    ("]}", r"[\]}][ \t]*:(?=\s|\Z)"),  # a flow collection as a mapping key
    ("&*!<?=_", r"[&*!<?=_](?<=[\s\[{,].)(?:(?<=[&*!?_])|(?<=<)<|(?<==)" + _END + ")"),  # anchors,
    # aliases, tags, a scalar starting with '?' (a key in 1.1's flow context) or '_' (a number to
    # yaml-rs), merge keys, YAML 1.1's value key
    ("", r":(?<=[\s\[{,]:)"),  # a scalar starting with ':'
    ("", r":[,?\[\]{}]"),  # ':' before a flow indicator or '?' (PyYAML: not inside a plain scalar)
    ("{", r"\{(?:[^\[\]{}\n]|[\[{][^\[\]{}\n]*[\]}])*(?<=[{,])[ ]*[\[{]"),  # a collection as a key
    # in a flow mapping
    ("@`%", r"[@`%](?<=[\s\[{,].)"),  # reserved indicators
    ("|>", r"[\[{,][ ]*[|>]"),  # block scalars in flow context
    ("|>", r"[|>](?<=[\s\[{,].)(?![-+1-9]{0,2}[ ]*(?:#[^\n]*)?(?:\r?\n|\Z))"),  # | or > not a block
    # scalar header
    ("", r"[yYnNoO](?<=[\s\[{,].)(?:(?<=[yY])es|(?<=Y)ES|(?<=[nN])o|(?<=N)O|(?<=[oO])n|(?<=O)N|(?<=[oO])ff"
         r"|(?<=O)FF)" + _END),  # YAML 1.1 booleans
    ("", r"[-+.0-9](?<=[\s\[{,].)(?:(?<=[-+])(?:\.[0-9_iInN]|_|0[0-9a-zA-Z_]|[0-9]" + _DIGITS + r")"
         r"|(?<=\.)[0-9_iInN]|(?<=0)[0-9a-zA-Z_]|(?<=[0-9])" + _DIGITS + ")"),  # numbers: a leading dot
    # (.5, .inf), a leading zero (octal in 1.1)
)]
_TRIGGERS = "".join(sorted({c for trigger, _ in _CHECKS for c in trigger}))
_NOT_TRIGGERS = bytes(c for c in range(128) if chr(c) not in _TRIGGERS)
# PyYAML's printable characters, less tabs (both parsers' tab rules are subtle), backslashes (escapes
# in double quotes), BOMs and the line breaks only YAML 1.1 has (NEL, LS, PS)
_ODD_CHARACTER = re.compile(r"[^\n\r\x20-\x5b\x5d-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd"
                            r"\U00010000-\U0010ffff]")
_ASCII_PLAIN = bytes(range(0x20, 0x7f)).replace(b"\\", b"") + b"\n\r"
_LONE_CR = re.compile(r"\r(?!\n)")  # a line break for YAML, not for the lines we count
# a block scalar whose next line is not indented deeper (empty; yaml-rs reads it as "\n"), or that
# keeps its trailing line breaks (+)
_ODD_BLOCK_SCALAR = re.compile(r"^( *)(?:[^\n]*[ :\-])?[|>](?:[-1-9]{0,2}[ ]*(?:#[^\n]*)?(?:\r?\n(?!\1 )|\Z)"
                               r"|[-1-9]?\+)", re.M)
# a comment on a line without quotes: whatever it is (a comment, or inside a block or quoted scalar
# that goes on past the line), nothing in it is a plain scalar, so the checks need not read it
_COMMENT = re.compile(r"(?:^|(?<= ))#[^'\"\n]*$", re.M)
_QUOTED_LINE = re.compile(r"^.*['\"].*$", re.M)


def risky(text: str) -> bool:
    """Whether anything in the text could read differently in yaml-rs than in PyYAML."""
    if text.isascii():
        if text.encode("ascii").translate(None, _ASCII_PLAIN):
            return True
    elif _ODD_CHARACTER.search(text):
        return True
    if "\r" in text and _LONE_CR.search(text):
        return True
    if ("|" in text or ">" in text) and _ODD_BLOCK_SCALAR.search(text):
        return True
    if _flow_spans_lines(text):
        return True
    if "#" in text:
        text = _without_comments(text)
    # which trigger characters the text holds, in one pass (non-ASCII characters are kept: no trigger)
    present = set(text.encode("utf-8", "surrogatepass").translate(None, _NOT_TRIGGERS).decode("utf-8", "replace"))
    text = "\n" + text
    return any(check.search(text) for trigger, check in _CHECKS if not trigger or present.intersection(trigger))


_BRACKETS = bytes.maketrans(b"[{]}", b"(())")
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}\n")


def _flow_spans_lines(text: str) -> bool:
    """Whether a flow collection ([...], {...}) goes on past its line: PyYAML wants its continuation
    lines indented, yaml-rs does not. (Brackets in quotes count too: such a file goes to PyYAML.)"""
    if "[" not in text and "{" not in text and "]" not in text and "}" not in text:
        return False
    # UTF-8 never uses ASCII bytes inside a multi-byte character: brackets and line breaks stay as they are
    shape = text.encode("utf-8", "surrogatepass").translate(_BRACKETS, _NOT_BRACKETS)
    while b"()" in shape:
        shape = shape.replace(b"()", b"")
    return b"(" in shape or b")" in shape


def _without_comments(text: str) -> str:
    """The text with the comments of quote-free lines cut off (lines with quotes are kept whole)."""
    if "'" not in text and '"' not in text:
        return _COMMENT.sub("", text)
    out = []
    pos = 0
    for m in _QUOTED_LINE.finditer(text):
        out.append(_COMMENT.sub("", text[pos:m.start()]))
        out.append(m.group())
        pos = m.end()
    out.append(_COMMENT.sub("", text[pos:]))
    return "".join(out)


_DOCUMENT_START = re.compile(r"^---(?=[ \r\n]|\Z)", re.M)


def documents(text: str) -> list[tuple[Any, int]] | None:
    """[(document, line of its first content)], as PyYAML's safe loader would give them; None when
    the file must be read by PyYAML (see the module docstring)."""
    yaml_rs = _yaml_rs()
    if yaml_rs is None or risky(text):
        return None
    starts = [m.start() for m in _DOCUMENT_START.finditer(text)]
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    starts.append(len(text))
    out = []
    line = 1
    for begin, end in zip(starts, starts[1:]):
        chunk = text[begin:end]
        try:
            data = yaml_rs.loads(chunk, parse_datetime=False)
        except (KeyboardInterrupt, SystemExit):  # pragma: no cover
            raise
        except BaseException:  # noqa: BLE001 - YAMLDecodeError, and pyo3's PanicException is a BaseException
            return None
        if data is not None:
            if isinstance(data, list):  # a list document, or a stream yaml-rs did not split as we did
                return None
            out.append((data, line + _content_offset(chunk)))
        line += chunk.count("\n")
    return out


def _content_offset(chunk: str) -> int:
    """Lines from the chunk's start to its first content: PyYAML's node line for the document."""
    line = 0
    pos = 3 if chunk.startswith("---") else 0
    while True:
        end = chunk.find("\n", pos)
        stripped = chunk[pos:end if end >= 0 else len(chunk)].strip()
        if stripped and not stripped.startswith("#"):
            return line
        if end < 0:
            return 0
        line += 1
        pos = end + 1
