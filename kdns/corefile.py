"""Corefile tokenizer and parser (CoreDNS / Caddy syntax): server blocks, directives, nested blocks.

Supports comments (#), quoted tokens, `{$ENV}` / `{%ENV%}` substitution, several keys per block
(space or comma separated), nested `{ }` blocks. Every error names file:line:column.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

_ENV_RE = re.compile(r"\{\$([A-Za-z_][A-Za-z0-9_]*)\}|\{%([A-Za-z_][A-Za-z0-9_]*)%\}")


class CorefileError(ValueError):
    def __init__(self, path: str, line: int, col: int, message: str):
        super().__init__(f"{path}:{line}:{col}: {message}")
        self.path, self.line, self.col, self.message = path, line, col, message


@dataclass(frozen=True, slots=True)
class Token:
    text: str
    line: int
    col: int
    quoted: bool = False


@dataclass
class Directive:
    """`name args... [{ lines }]`; `block` holds nested Directives (options)."""

    name: str
    args: list[Token]
    line: int
    col: int
    block: list["Directive"] = field(default_factory=list)
    has_block: bool = False
    path: str = ""

    def error(self, message: str, token: Token | None = None) -> CorefileError:
        if token is not None:
            return CorefileError(self.path, token.line, token.col, message)
        return CorefileError(self.path, self.line, self.col, message)

    @property
    def values(self) -> list[str]:
        return [t.text for t in self.args]


@dataclass
class ServerBlock:
    keys: list[Token]
    directives: list[Directive]
    line: int
    col: int


def tokenize(text: str, path: str = "Corefile") -> list[list[Token]]:
    """Split into lines of tokens (comments dropped, env substituted). Braces are their own tokens."""
    lines: list[list[Token]] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        tokens: list[Token] = []
        i, n = 0, len(raw)
        while i < n:
            ch = raw[i]
            if ch in " \t\r":
                i += 1
                continue
            if ch == "#":
                break
            if ch in "{}" and not _ENV_RE.match(raw, i):
                tokens.append(Token(ch, lineno, i + 1))
                i += 1
                continue
            if ch == '"':
                j = i + 1
                buf = []
                while j < n and raw[j] != '"':
                    if raw[j] == "\\" and j + 1 < n:
                        j += 1
                    buf.append(raw[j])
                    j += 1
                if j >= n:
                    raise CorefileError(path, lineno, i + 1, "unterminated quoted string")
                tokens.append(Token(_substitute("".join(buf), path, lineno, i + 1), lineno, i + 1, quoted=True))
                i = j + 1
                continue
            j = i
            while j < n and raw[j] not in " \t\r#":
                if raw[j] in "{}" and not _inside_env(raw, j):
                    break
                j += 1
            tokens.append(Token(_substitute(raw[i:j], path, lineno, i + 1), lineno, i + 1))
            i = j
        if tokens:
            lines.append(tokens)
    return lines


def _inside_env(raw: str, pos: int) -> bool:
    for m in _ENV_RE.finditer(raw):
        if m.start() <= pos < m.end():
            return True
    return False


def _substitute(text: str, path: str, line: int, col: int) -> str:
    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name not in os.environ:
            raise CorefileError(path, line, col, f"environment variable {name} is not set")
        return os.environ[name]
    return _ENV_RE.sub(repl, text)


NEWLINE = "\n"


class _Cursor:
    def __init__(self, lines: list[list[Token]], path: str):
        self.tokens: list[Token] = []
        for line in lines:
            self.tokens.extend(line)
            self.tokens.append(Token(NEWLINE, line[-1].line, line[-1].col + len(line[-1].text)))
        self.pos = 0
        self.path = path

    def peek(self) -> Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def next(self) -> Token | None:
        tok = self.peek()
        self.pos += 1
        return tok

    def skip_newlines(self) -> None:
        while (tok := self.peek()) is not None and tok.text == NEWLINE and not tok.quoted:
            self.pos += 1


def _is(tok: Token | None, text: str) -> bool:
    return tok is not None and tok.text == text and not tok.quoted


def parse(text: str, path: str = "Corefile") -> list[ServerBlock]:
    cur = _Cursor(tokenize(text, path), path)
    blocks: list[ServerBlock] = []
    while True:
        cur.skip_newlines()
        first = cur.peek()
        if first is None:
            break
        keys: list[Token] = []
        while True:
            tok = cur.next()
            if tok is None:
                raise CorefileError(path, first.line, first.col, "server block keys without a '{' block")
            if _is(tok, "{"):
                break
            if _is(tok, "}"):
                raise CorefileError(path, tok.line, tok.col, "unexpected '}' outside a server block")
            if _is(tok, NEWLINE):
                if keys and keys[-1].text.endswith(","):
                    keys[-1] = Token(keys[-1].text.rstrip(","), keys[-1].line, keys[-1].col)
                    continue
                raise CorefileError(path, first.line, first.col,
                                    f"expected '{{' after server block key(s) {' '.join(t.text for t in keys)}")
            keys.extend(Token(k, tok.line, tok.col) for k in tok.text.split(",") if k)
            if tok.text.endswith(","):
                if not keys:
                    raise CorefileError(path, tok.line, tok.col, "a server block key is missing before ','")
                keys[-1] = Token(keys[-1].text + ",", tok.line, tok.col)  # remember: keys continue
        keys = [Token(k.text.rstrip(","), k.line, k.col) for k in keys]
        if not keys:
            raise CorefileError(path, first.line, first.col, "server block without a key (such as .:53)")
        directives = _parse_block(cur, opener=cur.tokens[cur.pos - 1])
        blocks.append(ServerBlock(keys, directives, keys[0].line, keys[0].col))
    if not blocks:
        raise CorefileError(path, 1, 1, "no server blocks")
    return blocks


def _parse_block(cur: _Cursor, opener: Token) -> list[Directive]:
    """Directives until the '}' matching `opener`."""
    directives: list[Directive] = []
    while True:
        cur.skip_newlines()
        tok = cur.next()
        if tok is None:
            raise CorefileError(cur.path, opener.line, opener.col, "'{' is never closed")
        if _is(tok, "}"):
            return directives
        if _is(tok, "{"):
            raise CorefileError(cur.path, tok.line, tok.col, "unexpected '{' without a directive")
        directive = Directive(tok.text, [], tok.line, tok.col, path=cur.path)
        while True:
            nxt = cur.peek()
            if nxt is None or _is(nxt, NEWLINE) or _is(nxt, "}"):
                break
            cur.next()
            if _is(nxt, "{"):
                directive.has_block = True
                directive.block = _parse_block(cur, nxt)
                after = cur.peek()
                if after is not None and not _is(after, NEWLINE) and not _is(after, "}"):
                    raise CorefileError(cur.path, after.line, after.col, f"unexpected {after.text!r} after '}}'")
                break
            directive.args.append(nxt)
        directives.append(directive)
