"""`template CLASS TYPE [ZONE...] { match REGEX...; answer RR; additional RR; authority RR; rcode CODE;
fallthrough [ZONE...] }`: answers built from Go-style templates (see _gotemplate.py), checked at config time.

As CoreDNS: a question in the template's zones with a matching class and type is answered from the
first template whose regex matches; when none matches it is NXDOMAIN unless `fallthrough` covers it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from dnslib import CLASS, QTYPE, RCODE, RR, DNSError, DNSRecord

from ..corefile import Directive, Token
from . import Handler as Base, Next, Request, Result, SetupContext
from ._common import nargs, reply
from ._gotemplate import Template, TemplateError


@dataclass
class TemplateRule:
    qclass: int | None  # None: ANY
    qtype: int | None
    zones: list[str]
    regexes: list[re.Pattern] = field(default_factory=list)
    answer: list[Template] = field(default_factory=list)
    additional: list[Template] = field(default_factory=list)
    authority: list[Template] = field(default_factory=list)
    rcode: int = RCODE.NOERROR
    fallthrough: list[str] | None = None
    where: str = ""


def _template(opt: Directive, tok: Token) -> Template:
    try:
        return Template(tok.text)
    except TemplateError as exc:
        col = tok.col + (1 if tok.quoted else 0) + exc.offset
        raise opt.error(f"template: {exc.message}", Token(tok.text, tok.line, col, path=tok.path)) from None


def _in(name: str, zone: str) -> bool:
    return zone == "" or name == zone or name.endswith("." + zone)


def setup(d: Directive, ctx: SetupContext) -> list[TemplateRule]:
    from ..config import normalize_zone
    nargs(d, 2, None, "template CLASS TYPE [ZONE...] { ... }")
    cls_tok, type_tok = d.args[0], d.args[1]
    try:
        qclass = None if cls_tok.text.upper() == "ANY" else getattr(CLASS, cls_tok.text.upper())
    except (AttributeError, DNSError):
        qclass = -1
    if qclass == -1:
        raise d.error(f"template: unknown class {cls_tok.text!r} (IN, CH, HS or ANY)", cls_tok)
    try:
        qtype = None if type_tok.text.upper() == "ANY" else int(getattr(QTYPE, type_tok.text.upper()))
    except (AttributeError, DNSError):
        raise d.error(f"template: unknown type {type_tok.text!r}", type_tok) from None
    zones = [normalize_zone(t.text) for t in d.args[2:]] or list(ctx.block.zones)
    rule = TemplateRule(qclass, qtype, zones, where=d.where)
    checks: list[tuple[Template, Directive]] = []
    for opt in d.block:
        if opt.name == "match":
            nargs(opt, 1, None, "match REGEX...")
            for tok in opt.args:
                try:
                    rule.regexes.append(re.compile(_go_regex(tok.text)))
                except re.error as exc:
                    raise opt.error(f"template: bad regex {tok.text!r}: {exc}", tok) from None
        elif opt.name in ("answer", "additional", "authority"):
            nargs(opt, 1, 1, f"{opt.name} RR-TEMPLATE")
            tpl = _template(opt, opt.args[0])
            getattr(rule, opt.name).append(tpl)
            checks.append((tpl, opt))
        elif opt.name == "rcode":
            nargs(opt, 1, 1, "rcode CODE")
            try:
                code = getattr(RCODE, opt.args[0].text.upper())
            except (AttributeError, DNSError):
                code = None
            if not isinstance(code, int):
                raise opt.error(f"template: unknown rcode {opt.args[0].text!r}", opt.args[0])
            rule.rcode = code
        elif opt.name == "fallthrough":
            rule.fallthrough = [normalize_zone(t.text) for t in opt.args]
        else:
            raise opt.error(f"template: unknown option {opt.name!r} (kdns supports: match, answer, additional, "
                            "authority, rcode, fallthrough; ederror is rejected)")
    if not rule.regexes:
        rule.regexes.append(re.compile(".*"))
    names = set().union(*(r.groupindex for r in rule.regexes))
    most = max(r.groups for r in rule.regexes)
    for tpl, tok_opt in checks:
        tok = tok_opt.args[0]
        for group, offset in tpl.groups:
            if group not in names:
                raise tok_opt.error(f"template: .Group.{group} is not a named group of the match regexes "
                                    f"({', '.join(sorted(names)) or 'none'})", _at(tok, offset))
        for index, offset in tpl.indexes:
            if not 0 <= index <= most:
                raise tok_opt.error(f"template: index .Match {index}: the match regexes have {most} groups",
                                    _at(tok, offset))
        _check_rr(tok_opt, tok, tpl, rule)
    rules = ctx.block.plugins.get("template") or []
    return rules + [rule]


def _at(tok: Token, offset: int) -> Token:
    return Token(tok.text, tok.line, tok.col + (1 if tok.quoted else 0) + offset, path=tok.path)


def _go_regex(text: str) -> str:
    """Go's (?P<name>...) is Python's; Go also accepts (?<name>...)."""
    return re.sub(r"\(\?<([A-Za-z_][A-Za-z0-9_]*)>", r"(?P<\1>", text)


def _check_rr(opt: Directive, tok: Token, tpl: Template, rule: TemplateRule) -> None:
    """Render with sample values: a record that cannot be parsed then is a config error, not a run-time surprise."""
    if tpl.groups or tpl.indexes:
        return  # the text depends on the match; checked per query (a bad one is SERVFAIL and logged)
    sample = {"Name": "example.org.", "Zone": "org.", "Class": "IN", "Type": "A", "Message": "", "Question": "",
              "Remote": "192.0.2.1", "Match": ["example.org."], "Group": {}}
    try:
        _rr(tpl.render(sample))
    except ValueError as exc:
        raise opt.error(f"template: {exc}", tok) from None


def _unparen(text: str) -> str:
    """Zone-file parentheses (`SOA a. b. (1 60 60 60 60)`) as spaces, outside quoted strings: dnslib's
    parser reads one line and does not know them."""
    out, quoted, escaped = [], False, False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch in "()" and not quoted:
            ch = " "
        out.append(ch)
    return "".join(out)


def _rr(text: str) -> RR:
    try:
        records = RR.fromZone(_unparen(text))
    except Exception as exc:  # noqa: BLE001 - dnslib's zone parser raises many kinds
        raise ValueError(f"not a resource record: {text!r} ({exc})") from None
    if len(records) != 1:
        raise ValueError(f"expected one resource record, got {len(records)}: {text!r}")
    return records[0]


class Handler(Base):
    """config: the block's templates, in file order."""

    @property
    def classes(self) -> set[int]:
        """Classes other than IN that a template names (CH, HS): the server lets those questions in."""
        return {rule.qclass for rule in self.config if rule.qclass is not None}

    def serve(self, req: Request, next: Next) -> Result:
        query = req.query
        fqdn = req.name + "." if req.name else "."
        for rule in self.config:
            zone = max((z for z in rule.zones if _in(req.name, z)), key=len, default=None)
            if zone is None or (rule.qclass is not None and rule.qclass != query.qclass) or \
                    (rule.qtype is not None and rule.qtype != query.qtype):
                continue
            for regex in rule.regexes:
                m = regex.search(fqdn)
                if m is not None:
                    return self._answer(req, rule, zone, m)
            if rule.fallthrough is None or (rule.fallthrough and not any(_in(req.name, z) for z in rule.fallthrough)):
                req.top.cacheable = False
                return reply(req, "template", rcode=RCODE.NXDOMAIN)
        return next(req)

    def _answer(self, req: Request, rule: TemplateRule, zone: str, m: re.Match):
        query = req.query
        data = {"Name": query.name_text, "Zone": zone + "." if zone else ".",
                "Class": CLASS.get(query.qclass, str(query.qclass)), "Type": QTYPE.get(query.qtype, str(query.qtype)),
                "Remote": req.client_ip or "", "Match": [g or "" for g in (m.group(0),) + m.groups()],
                "Group": {**{str(i): g or "" for i, g in enumerate((m.group(0),) + m.groups())},
                          **{k: v or "" for k, v in m.groupdict().items()}}}
        try:
            parsed = DNSRecord.parse(query.data)
            data["Question"] = str(parsed.q)
            data["Message"] = str(parsed)
            sections = [[_rr(t.render(data)) for t in getattr(rule, s)] for s in ("answer", "authority", "additional")]
        except (ValueError, DNSError) as exc:
            self.block.log.error("template_failed", rule=rule.where, name=query.name_text, error=str(exc))
            return reply(req, "template", rcode=RCODE.SERVFAIL, aa=False)
        return reply(req, "template", *sections, rcode=rule.rcode)
