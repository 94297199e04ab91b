"""`rewrite [continue|stop] FIELD ...`: rewrite the question before the rest of the block answers it, and the
response on its way back (CoreDNS's rewrite: fields name, type, class, ttl, rcode, cname).

The rewritten question goes through the rest of the block's chain (template, hosts, kubernetes,
forward, cache) exactly like a question asked directly; the client always sees its own question,
and with `answer auto|name|value` (always for `exact`) its own names in the records."""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

from dnslib import CLASS, CNAME, QTYPE, RCODE, DNSError, DNSLabel, DNSQuestion, DNSRecord

from ..corefile import Directive, Token
from ..wire import WireError, error_response, parse_query, patch
from . import Handler as Base, Next, Request, Result, SetupContext, then
from ._common import asked_name, edit

MATCH_TYPES = ("exact", "prefix", "suffix", "substring", "regex")
MAX_REGEX = 10000  # as CoreDNS: a pattern is compiled once but matched against every question
VALUE_TYPES = (QTYPE.CNAME, QTYPE.DNAME, QTYPE.SOA, QTYPE.SRV, QTYPE.MX, QTYPE.NAPTR, QTYPE.NS)


def _fqdn(name: str) -> str:
    name = name.lower()
    return name if name.endswith(".") else name + "."


@dataclass
class Matcher:
    """exact|prefix|suffix|substring|regex FROM [TO]: matches a name and, given TO, rewrites it."""

    kind: str
    source: str
    target: str = ""
    regex: re.Pattern | None = None

    def match(self, name: str) -> bool:
        k, s = self.kind, self.source
        if k in ("exact", "remap"):
            return name == s or (k == "remap" and name.endswith("." + s))
        if k == "prefix":
            return name.startswith(s)
        if k == "suffix":
            return name.endswith(s)
        if k == "substring":
            return s in name
        return self.regex.search(name) is not None

    def rewrite(self, name: str) -> str | None:
        k, s, t = self.kind, self.source, self.target
        if k == "exact":
            return t if name == s else None
        if k == "remap":  # answer auto: the rewritten name, and names below it, back to the asked one
            if name == s:
                return t
            return name[: len(name) - len(s)] + t if name.endswith("." + s) else None
        if k == "prefix":
            return t + name[len(s):] if name.startswith(s) else None
        if k == "suffix":
            return name[: len(name) - len(s)] + t if name.endswith(s) else None
        if k == "substring":
            return name.replace(s, t) if s in name else None
        m = self.regex.search(name)
        if m is None:
            return None
        for i, group in enumerate((m.group(0),) + m.groups()):  # {N} as CoreDNS substitutes them
            t = t.replace("{%d}" % i, group or "")
        return _fqdn(t)

    def answer_rule(self, before: str, after: str) -> "Matcher":
        """answer auto (always for exact): suffix rules swap FROM and TO, the others map the name they
        produced, and names below it, back to the asked one (as CoreDNS's remap rewriter)."""
        if self.kind == "suffix":
            return Matcher("suffix", self.target, self.source)
        return Matcher("remap", after, before)


def _matcher(d: Directive, kind_tok: Token | None, source: Token, target: Token | None) -> Matcher:
    kind = kind_tok.text if kind_tok is not None else "exact"
    if kind not in MATCH_TYPES:
        raise d.error(f"rewrite: unknown match type {kind!r} (exact, prefix, suffix, substring or regex)", kind_tok)
    src, dst = source.text.lower(), target.text.lower() if target is not None else ""
    if kind != "regex":  # CoreDNS normalises every non-regex FROM and TO to a lower-case FQDN
        src = _fqdn(src)
        dst = _fqdn(dst) if target is not None else ""
    regex = None
    if kind == "regex":
        if len(src) > MAX_REGEX:
            raise d.error(f"rewrite: regex too long ({len(src)} characters, at most {MAX_REGEX})", source)
        try:
            regex = re.compile(src, re.I)
        except re.error as exc:
            raise d.error(f"rewrite: bad regex {source.text!r}: {exc}", source) from None
        if target is not None:
            for ref in re.findall(r"\{(\d+)\}", dst):
                if int(ref) > regex.groups:
                    raise d.error(f"rewrite: {{{ref}}} but the regex has {regex.groups} groups", target)
    return Matcher(kind, src, dst, regex)


@dataclass
class Rule:
    field: str  # name | type | class | ttl | rcode | cname
    stop: bool = True
    matcher: Matcher | None = None
    answer_auto: bool = False
    answer_name: list[Matcher] = field(default_factory=list)
    answer_value: list[Matcher] = field(default_factory=list)
    from_value: int | None = None  # type/class/rcode FROM (None: any)
    to_value: int = 0
    ttl: tuple[int, int] = (0, 0)  # min, max
    where: str = ""  # file:line:col of the rule (kdns explain names it)


def _code(d: Directive, tok: Token, table, what: str) -> int:
    text = tok.text.upper()
    if text.isdigit():
        return int(text)
    try:
        value = getattr(table, text)
    except (AttributeError, DNSError):
        value = None
    if not isinstance(value, int):
        raise d.error(f"rewrite: unknown {what} {tok.text!r}", tok)
    return int(value)


def _answer_options(d: Directive, rule: Rule, toks: list[Token]) -> None:
    """answer (auto | (name|value FROM TO)) { [answer] (auto | (name|value FROM TO)) }"""
    i = 0
    first = True
    while i < len(toks):
        if toks[i].text == "answer":
            i += 1
        elif first:
            raise d.error(f"rewrite: expected 'answer', got {toks[i].text!r}", toks[i])
        first = False
        if i >= len(toks):
            raise d.error("rewrite: 'answer' needs auto, name FROM TO or value FROM TO", toks[i - 1])
        what = toks[i].text
        if what == "auto":
            rule.answer_auto = True
            i += 1
        elif what in ("name", "value"):
            if i + 2 >= len(toks):
                raise d.error(f"rewrite: answer {what} needs FROM and TO", toks[i])
            m = _matcher(d, Token("regex", toks[i].line, toks[i].col), toks[i + 1], toks[i + 2])
            (rule.answer_name if what == "name" else rule.answer_value).append(m)
            i += 3
        else:
            raise d.error(f"rewrite: answer expects auto, name or value, got {what!r}", toks[i])
    if rule.answer_auto and rule.answer_name:
        raise d.error("rewrite: answer auto cannot be combined with answer name rules", toks[0])


def _rule(d: Directive, toks: list[Token], stop: bool) -> Rule:
    if not toks:
        raise d.error("rewrite: missing FIELD (name, type, class, ttl, rcode, cname)")
    fld, rest = toks[0].text, toks[1:]
    rule = Rule(fld, stop)
    if fld == "name":
        if len(rest) == 2:
            rule.matcher = _matcher(d, None, rest[0], rest[1])
        elif len(rest) >= 3 and rest[0].text in MATCH_TYPES:
            rule.matcher = _matcher(d, rest[0], rest[1], rest[2])
            _answer_options(d, rule, rest[3:])
        else:
            raise d.error("rewrite: usage: name [exact|prefix|suffix|substring|regex] FROM TO [answer auto|"
                          "(name|value FROM TO)...]", toks[0])
    elif fld in ("type", "class"):
        if len(rest) != 2:
            raise d.error(f"rewrite: usage: {fld} FROM TO", toks[0])
        table = QTYPE if fld == "type" else CLASS
        rule.from_value, rule.to_value = _code(d, rest[0], table, fld), _code(d, rest[1], table, fld)
    elif fld in ("ttl", "rcode", "cname"):
        need = {"ttl": 2, "rcode": 3, "cname": 2}[fld]
        kind = None
        if len(rest) == need + 1 and rest[0].text in MATCH_TYPES:
            kind, rest = rest[0], rest[1:]
        if len(rest) != need:
            usage = {"ttl": "ttl [exact|prefix|suffix|substring|regex] NAME SECONDS|MIN-MAX",
                     "rcode": "rcode [exact|prefix|suffix|substring|regex] NAME FROM TO",
                     "cname": "cname [exact|prefix|suffix|substring|regex] FROM TO"}[fld]
            raise d.error(f"rewrite: usage: {usage}", toks[0])
        if fld == "cname":
            rule.matcher = _matcher(d, kind, rest[0], rest[1])
        else:
            rule.matcher = _matcher(d, kind, rest[0], None)
        if fld == "ttl":
            m = re.fullmatch(r"(\d*)-?(\d*)", rest[1].text)
            if not m or not rest[1].text or rest[1].text == "-":
                raise d.error(f"rewrite: ttl must be SECONDS or MIN-MAX, got {rest[1].text!r}", rest[1])
            lo = int(m.group(1)) if m.group(1) else 0
            hi = int(m.group(2)) if m.group(2) else (lo if "-" not in rest[1].text else 2**31 - 1)
            if lo > hi or hi > 2**31 - 1:
                raise d.error(f"rewrite: bad ttl range {rest[1].text!r}", rest[1])
            rule.ttl = (lo, hi)
        elif fld == "rcode":
            rule.from_value, rule.to_value = (_code(d, rest[1], RCODE, "rcode"), _code(d, rest[2], RCODE, "rcode"))
    elif fld == "edns0":
        raise d.error("rewrite: edns0 rules are not supported by kdns", toks[0])
    else:
        raise d.error(f"rewrite: unknown field {fld!r} (name, type, class, ttl, rcode, cname)", toks[0])
    return rule


def setup(d: Directive, ctx: SetupContext) -> list[Rule]:
    toks = list(d.args)
    stop = True
    if toks and toks[0].text in ("continue", "stop"):
        stop = toks.pop(0).text == "stop"
    rules = ctx.block.plugins.get("rewrite") or []
    if d.has_block:
        if toks:
            raise d.error("rewrite: a rule block takes no arguments besides continue|stop", toks[0])
        lines = list(d.block)
        if not lines or lines[0].name != "name":
            raise d.error("rewrite: the block form is { name ... [answer name|value FROM TO]... }")
        head = lines[0]
        rule = _rule(head, [Token("name", head.line, head.col, path=head.path)] + head.args, stop)
        for opt in lines[1:]:
            if opt.name != "answer":
                raise opt.error(f"rewrite: only 'answer name|value FROM TO' may follow name, got {opt.name!r}")
            _answer_options(opt, rule, [Token("answer", opt.line, opt.col, path=opt.path)] + opt.args)
        rule.where = head.where
        return rules + [rule]
    rule = _rule(d, toks, stop)
    rule.where = d.where
    return rules + [rule]


# ------------------------------------------------------------------------------ run time


def _question(name: str, qtype: int, qclass: int) -> bytes:
    out = b""
    for label in name.rstrip(".").split(".") if name.strip(".") else []:
        raw = label.encode("latin-1")
        if not 0 < len(raw) < 64:
            raise ValueError(f"bad label in {name!r}")
        out += bytes([len(raw)]) + raw
    out += b"\0"
    if len(out) > 255:
        raise ValueError(f"name too long: {name!r}")
    return out + struct.pack("!HH", qtype, qclass)


class Handler(Base):
    """config: the block's rules, in file order."""

    def serve(self, req: Request, next: Next) -> Result:
        query = req.query
        name, qtype, qclass = query.name_text.lower(), query.qtype, query.qclass
        name_rules: list[tuple[Rule, str, str]] = []  # (rule, name before, name after)
        response_rules: list[Rule] = []
        for rule in self.config:
            matched = False
            if rule.field == "name":
                new = rule.matcher.rewrite(name)
                if new is not None:
                    name_rules.append((rule, name, new))
                    name, matched = new, True
            elif rule.field == "type":
                if rule.from_value == qtype:
                    qtype, matched = rule.to_value, True
            elif rule.field == "class":
                if rule.from_value == qclass:
                    qclass, matched = rule.to_value, True
            elif rule.field == "cname":  # matches CNAME targets in the response, not the question
                response_rules.append(rule)
            elif rule.matcher.match(name):
                response_rules.append(rule)
                matched = True
            if matched and rule.stop:
                break
        if (name, qtype, qclass) == (query.name_text.lower(), query.qtype, query.qclass):
            if not response_rules:
                return next(req)
            return then(next(req), lambda r: self._back(req, r, [], response_rules, next))
        try:
            data = query.data[:12] + _question(name, qtype, qclass) + query.data[query.qend:]
            inner = parse_query(data)
        except (ValueError, WireError) as exc:
            req.top.cacheable = False
            self.block.log.warning("rewrite_failed", name=query.name_text, rewritten=name, error=str(exc))
            return error_response(query.data, RCODE.SERVFAIL, query), "rewrite"
        return then(next(req.replace(inner)), lambda r: self._back(req, r, name_rules, response_rules, next))

    def _back(self, req: Request, result: tuple, name_rules, response_rules, next):
        response, plugin = result
        query = req.query
        cname_rules = [r for r in response_rules if r.field == "cname"]

        def fix(record: DNSRecord) -> None:
            record.questions = [DNSQuestion(asked_name(query), query.qtype, query.qclass)]
            for rule, before, after in name_rules:
                owners, values = list(rule.answer_name), list(rule.answer_value)
                if rule.matcher.kind == "exact" or rule.answer_auto:
                    back = rule.matcher.answer_rule(before, after)
                    owners.insert(0, back)
                    values.insert(0, back)
                for rr in record.rr + record.auth + record.ar:
                    if rr.rtype == QTYPE.OPT:
                        continue
                    rr.rname = DNSLabel(_apply(owners, str(rr.rname)))
                    if values and rr.rtype in VALUE_TYPES:
                        _rewrite_values(rr, values)
            for rule in response_rules:
                if rule.field == "ttl":
                    lo, hi = rule.ttl
                    for rr in record.rr:
                        rr.ttl = min(max(rr.ttl, lo), hi)
                elif rule.field == "rcode" and record.header.rcode == rule.from_value:
                    record.header.rcode = rule.to_value
        try:
            out = edit(response, fix)
        except Exception as exc:  # noqa: BLE001 - dnslib raises many kinds for a name it cannot pack
            req.top.cacheable = False
            self.block.log.warning("rewrite_failed", name=query.name_text, error=f"response: {exc}")
            return error_response(query.data, RCODE.SERVFAIL, query), "rewrite"
        out = patch(out, query)
        if cname_rules:
            return self._cname(req, out, plugin, cname_rules, next)
        return out, plugin

    def _cname(self, req: Request, response: bytes, plugin: str, rules: list[Rule], next):
        """cname FROM TO: a CNAME target matching FROM becomes TO, and TO's records replace the old target's."""
        record = DNSRecord.parse(response)
        for i, rr in enumerate(record.rr):
            if rr.rtype != QTYPE.CNAME:
                continue
            target = str(rr.rdata.label).lower()
            new = next_target = None
            for rule in rules:
                new = rule.matcher.rewrite(target)
                if new is not None:
                    break
            if new is None:
                continue
            next_target = _fqdn(new)
            record.rr[i].rdata = CNAME(DNSLabel(next_target))
            keep = record.rr[: i + 1]
            try:
                data = req.query.data[:12] + _question(next_target, req.query.qtype, req.query.qclass) + \
                    req.query.data[req.query.qend:]
                inner = parse_query(data)
            except (ValueError, WireError):
                return response, plugin
            req.top.cacheable = False

            def merge(result: tuple) -> tuple:
                try:
                    sub = DNSRecord.parse(result[0])
                    record.rr = keep + list(sub.rr)
                    record.header.rcode = sub.header.rcode
                    return patch(bytes(record.pack()), req.query), plugin
                except Exception as exc:  # noqa: BLE001 - dnslib raises many kinds for a name it cannot pack
                    self.block.log.warning("rewrite_failed", name=req.query.name_text, error=f"cname: {exc}")
                    return response, plugin
            return then(next(req.replace(inner)), merge)
        return response, plugin


def _apply(matchers: list[Matcher], name: str) -> str:
    """Every response rule in turn, as CoreDNS applies them to each record."""
    out = name
    for m in matchers:
        new = m.rewrite(out.lower())
        if new is not None:
            out = new
    return out


def _rewrite_values(rr, matchers: list[Matcher]) -> None:
    rd = rr.rdata
    for attr in ("label", "mname", "rname", "target", "mx", "replacement"):
        value = getattr(rd, attr, None)
        if isinstance(value, DNSLabel):
            setattr(rd, attr, DNSLabel(_apply(matchers, str(value))))
