"""Corefile tokenizer and parser (CoreDNS / Caddy syntax): server blocks, directives, nested blocks.

Supports comments (#), quoted tokens, `{$ENV}` / `{%ENV%}` / `{$ENV:default}` substitution, several
keys per block (space or comma separated), nested `{ }` blocks, snippets `(name) { ... }` and
`import NAME|FILE|GLOB` (files relative to the importing file). Every error names file:line:column,
in the file where the token was written (an imported file names itself).
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from dataclasses import dataclass, field

_ENV_RE = re.compile(r"\{\$([A-Za-z_][A-Za-z0-9_]*)(?::([^}]*))?\}|\{%([A-Za-z_][A-Za-z0-9_]*)%\}")
MAX_IMPORT_DEPTH = 16
MAX_TOKENS = 1_000_000  # bound what imports and snippets may expand to


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
    path: str = ""

    def error(self, message: str) -> CorefileError:
        return CorefileError(self.path, self.line, self.col, message)


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
            return CorefileError(token.path or self.path, token.line, token.col, message)
        return CorefileError(self.path, self.line, self.col, message)

    @property
    def values(self) -> list[str]:
        return [t.text for t in self.args]

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}:{self.col}"


@dataclass
class ServerBlock:
    keys: list[Token]
    directives: list[Directive]
    line: int
    col: int
    path: str = ""


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
            if ch in "{}" and (i + 1 == n or raw[i + 1] in " \t\r#"):  # a brace is a token only on its own (Caddy)
                tokens.append(Token(ch, lineno, i + 1, path=path))
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
                tokens.append(Token(_substitute("".join(buf), path, lineno, i + 1), lineno, i + 1, quoted=True,
                                    path=path))
                i = j + 1
                continue
            j = i
            while j < n and raw[j] not in " \t\r#":
                j += 1
            tokens.append(Token(_substitute(raw[i:j], path, lineno, i + 1), lineno, i + 1, path=path))
            i = j
        if tokens:
            lines.append(tokens)
    return lines


def _substitute(text: str, path: str, line: int, col: int) -> str:
    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(3)
        if name in os.environ:
            return os.environ[name]
        if m.group(2) is not None:  # {$VAR:default}, as Caddy
            return m.group(2)
        raise CorefileError(path, line, col, f"environment variable {name} is not set")
    return _ENV_RE.sub(repl, text)


NEWLINE = "\n"


def _flat(lines: list[list[Token]]) -> list[Token]:
    out: list[Token] = []
    for line in lines:
        out.extend(line)
        last = line[-1]
        out.append(Token(NEWLINE, last.line, last.col + len(last.text), path=last.path))
    return out


class _Expander:
    """Snippets and imports, spliced in at token level (as Caddy does) before the block structure is parsed."""

    def __init__(self, warnings: list[str] | None = None) -> None:
        self.snippets: dict[str, list[Token]] = {}
        self.count = 0
        self.warnings = warnings if warnings is not None else []
        self.files: list[tuple[str, str]] = []  # (path, text) of every imported file, in order

    def expand(self, tokens: list[Token], depth: int, chain: tuple[str, ...]) -> list[Token]:
        out: list[Token] = []
        level = 0  # brace depth, across the whole expansion: a snippet is defined only at the top level
        i, n = 0, len(tokens)
        at_line_start = True
        while i < n:
            tok = tokens[i]
            if at_line_start and level == 0 and _snippet_name(tok) is not None and i + 1 < n \
                    and _is(tokens[i + 1], "{"):
                name = _snippet_name(tok)
                body, i = _until_close(tokens, i + 1)
                if name in self.snippets:
                    raise tok.error(f"snippet ({name}) is defined twice")
                self.snippets[name] = body
                at_line_start = True
                continue
            if at_line_start and tok.text == "import" and not tok.quoted:
                args = []
                j = i + 1
                while j < n and not _is(tokens[j], NEWLINE) and not _is(tokens[j], "}"):
                    args.append(tokens[j])
                    j += 1
                if len(args) != 1:
                    raise tok.error(f"import: expected one snippet name, file or glob, got {len(args)} arguments")
                out.extend(self._import(args[0], depth, chain))
                i = j + 1 if j < n and _is(tokens[j], NEWLINE) else j
                at_line_start = True
                continue
            if _is(tok, "{"):
                level += 1
            elif _is(tok, "}"):
                level -= 1
            out.append(tok)
            self.count += 1
            if self.count > MAX_TOKENS:
                raise tok.error(f"the Corefile expands to more than {MAX_TOKENS} tokens (imports too deep?)")
            at_line_start = _is(tok, NEWLINE) or _is(tok, "{") or _is(tok, "}")
            i += 1
        return out

    def _import(self, arg: Token, depth: int, chain: tuple[str, ...]) -> list[Token]:
        if depth >= MAX_IMPORT_DEPTH:
            raise arg.error(f"import: nested more than {MAX_IMPORT_DEPTH} deep (an import cycle?)")
        if arg.text in self.snippets:
            if arg.text in chain:
                raise arg.error(f"import: snippet ({arg.text}) imports itself")
            return self.expand(self.snippets[arg.text], depth + 1, chain + (arg.text,))
        pattern = arg.text
        if not os.path.isabs(pattern):
            pattern = os.path.join(os.path.dirname(arg.path) or ".", pattern)
        if glob.has_magic(pattern):
            paths = sorted(glob.glob(pattern))
            if not paths:  # as Caddy: not an error, but said
                self.warnings.append(f"{arg.path}:{arg.line}:{arg.col}: import: no file matches {arg.text!r}")
        else:
            if not os.path.exists(pattern):
                raise arg.error(f"import: {arg.text!r} is neither a snippet defined above nor a file")
            paths = [pattern]
        out: list[Token] = []
        for path in paths:
            real = os.path.realpath(path)
            if real in chain:
                raise arg.error(f"import: {path} imports itself")
            try:
                with open(path, encoding="utf-8") as fh:
                    text = fh.read()
            except (OSError, UnicodeDecodeError) as exc:
                raise arg.error(f"import: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
            self.files.append((path, text))
            out.extend(self.expand(_flat(tokenize(text, path)), depth + 1, chain + (real,)))
        return out


def _snippet_name(tok: Token) -> str | None:
    text = tok.text
    if not tok.quoted and len(text) > 2 and text[0] == "(" and text[-1] == ")":
        return text[1:-1]
    return None


def _until_close(tokens: list[Token], opener: int) -> tuple[list[Token], int]:
    """The tokens inside the braces opened at `opener`, and the index after the closing one."""
    level = 0
    for j in range(opener, len(tokens)):
        if _is(tokens[j], "{"):
            level += 1
        elif _is(tokens[j], "}"):
            level -= 1
            if level == 0:
                k = j + 1
                if k < len(tokens) and _is(tokens[k], NEWLINE):
                    k += 1
                return tokens[opener + 1:j], k
    raise tokens[opener].error("'{' is never closed")


class _Cursor:
    def __init__(self, tokens: list[Token], path: str):
        self.tokens = tokens
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


def digest(text: str, path: str = "Corefile") -> str:
    """SHA-512 of a Corefile and every file it imports, so `reload` sees an edited imported file too
    (without imports: the Corefile's own SHA-512, as CoreDNS's reload hash)."""
    h = hashlib.sha512(text.encode())
    expander = _Expander()
    try:
        real = os.path.realpath(path) if os.path.exists(path) else path
        expander.expand(_flat(tokenize(text, path)), 0, (real,))
    except CorefileError:
        return h.hexdigest()  # loading will report the error; its text is what changed
    for name, content in expander.files:
        h.update(b"\0" + name.encode() + b"\0" + content.encode())
    return h.hexdigest()


def parse(text: str, path: str = "Corefile", warnings: list[str] | None = None) -> list[ServerBlock]:
    """Server blocks of a Corefile, snippets and imports expanded (what deserves a word goes to `warnings`)."""
    real = os.path.realpath(path) if os.path.exists(path) else path
    tokens = _Expander(warnings).expand(_flat(tokenize(text, path)), 0, (real,))
    cur = _Cursor(tokens, path)
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
                raise first.error("server block keys without a '{' block")
            if _is(tok, "{"):
                break
            if _is(tok, "}"):
                raise tok.error("unexpected '}' outside a server block")
            if _is(tok, NEWLINE):
                if keys and keys[-1].text.endswith(","):
                    keys[-1] = Token(keys[-1].text.rstrip(","), keys[-1].line, keys[-1].col, path=tok.path)
                    continue
                raise first.error(f"expected '{{' after server block key(s) {' '.join(t.text for t in keys)}")
            keys.extend(Token(k, tok.line, tok.col, path=tok.path) for k in tok.text.split(",") if k)
            if tok.text.endswith(","):
                if not keys:
                    raise tok.error("a server block key is missing before ','")
                keys[-1] = Token(keys[-1].text + ",", tok.line, tok.col, path=tok.path)  # remember: keys continue
        keys = [Token(k.text.rstrip(","), k.line, k.col, path=k.path) for k in keys]
        if not keys:
            raise first.error("server block without a key (such as .:53)")
        directives = _parse_block(cur, opener=cur.tokens[cur.pos - 1])
        blocks.append(ServerBlock(keys, directives, keys[0].line, keys[0].col, keys[0].path))
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
            raise opener.error("'{' is never closed")
        if _is(tok, "}"):
            return directives
        if _is(tok, "{"):
            raise tok.error("unexpected '{' without a directive")
        directive = Directive(tok.text, [], tok.line, tok.col, path=tok.path)
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
                    raise after.error(f"unexpected {after.text!r} after '}}'")
                break
            directive.args.append(nxt)
        directives.append(directive)
