"""`kdns explain`: the blocks offline (manifests, Corefile, one API list) or a running kdns, and the printed report."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING

from .cache import AnswerCache
from .config import Settings
from .index import ClusterIndex
from .log import Logger
from .memory import MemoryBudget
from .metrics import DnsMetrics
from .pipeline import Block
from .sources import object_filter
from .startup import bad_config

if TYPE_CHECKING:  # the explain machinery is loaded when a question is asked, not by `kdns serve`
    from .explain import Question

EXIT_ANSWERED, EXIT_NOT_ANSWERED = 0, 1
API_LIST_TIMEOUT = 60.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The explain-only flags (the cluster source and what-to-serve flags are the serve command's)."""
    parser.add_argument("name", metavar="NAME", help="the name as a pod would write it (web, web.shop, "
                        "web.shop.svc.cluster.local.)")
    parser.add_argument("--type", default="A", metavar="TYPE", help="record type (default A)")
    parser.add_argument("--from", dest="source", default="default", metavar="NS|NS/POD",
                        help="the namespace (or pod) asking: its search list is replayed (default: default)")
    parser.add_argument("--ndots", type=int, default=None, metavar="N",
                        help="the pod's ndots (default: the pod's dnsConfig with --from NS/POD, else 5)")
    parser.add_argument("--search", nargs="+", default=None, metavar="DOMAIN",
                        help="the pod's whole search list (default: the pod's own with --from NS/POD, else the "
                             "kubelet's <ns>.svc.<zone> svc.<zone> <zone>)")
    parser.add_argument("--server", metavar="http://HOST:PORT",
                        help="ask a running kdns's explain endpoint (--explain-listen / the `explain` directive)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")


def question(args: argparse.Namespace) -> Question:
    from .explain import Question
    ns, _, pod = args.source.partition("/")
    if not ns or args.ndots is not None and not 0 <= args.ndots <= 15:
        raise bad_config("--from/--ndots", "expected --from NAMESPACE[/POD] and --ndots 0-15",
                         "e.g. --from shop or --from shop/web-0 --ndots 5")
    return Question(args.name, args.type, ns, pod, args.ndots, args.search)


def explain_command(args: argparse.Namespace, load_settings) -> int:
    """Run `kdns explain`; exit 0 when the final answer is NOERROR with records, 1 otherwise, 2 on bad input."""
    from .explain import ExplainError
    q = question(args)
    if args.server:
        report = _ask_server(args.server, q)
    else:
        try:
            report = asyncio.run(_offline(args, load_settings(args), q))
        except ExplainError as exc:
            raise bad_config("explain", str(exc), "see kdns explain --help") from None
    sys.stdout.write(json.dumps(report, indent=2) + "\n" if args.json else render(report))
    return EXIT_ANSWERED if report["final"]["ok"] else EXIT_NOT_ANSWERED


def query_string(q: Question) -> str:
    params = [("name", q.name), ("type", q.qtype), ("from", q.namespace + (f"/{q.pod}" if q.pod else ""))]
    params += [("ndots", str(q.ndots))] if q.ndots is not None else []
    params += [("search", d) for d in (q.search or [])]
    return urllib.parse.urlencode(params)


def _ask_server(server: str, q: Question) -> dict:
    url = server.rstrip("/") + "/explain?" + query_string(q)
    try:
        with urllib.request.urlopen(url, timeout=30) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        try:
            detail = json.loads(detail).get("error", detail)
        except ValueError:
            pass
        raise bad_config("--server", f"{url}: HTTP {exc.code}: {detail}", "check the question's flags") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise bad_config("--server", f"{url}: {reason}",
                         "is the explain listener on? (--explain-listen, or the Corefile `explain` directive; "
                         "kubectl port-forward to reach it in a cluster)") from None


async def _offline(args: argparse.Namespace, settings: Settings, q: Question) -> dict:
    from .explain import Explainer
    quiet = Logger(level="error")
    index, unfiltered = await load_index(settings, quiet, args)
    blocks = offline_blocks(settings, index, quiet, args.resolv_conf)
    try:
        return await Explainer(blocks, unfiltered).explain(q)
    finally:
        for block in blocks:
            if block.forwarder is not None:
                block.forwarder.close()


async def load_index(settings: Settings, log: Logger,
                     args: argparse.Namespace) -> tuple[ClusterIndex, ClusterIndex | None]:
    """The cluster as the server would index it, once; and, for manifests with filters, every object unfiltered."""
    from .app import index_for
    k = settings.kubernetes
    if k is None:
        index = ClusterIndex(implicit_namespaces=True)
        index.mark_synced()
        return index, None
    index = index_for(k)
    wanted = object_filter(k.namespaces, k.labels)
    if k.manifests:
        from .sources.manifests import ManifestSource
        ManifestSource(k.manifests, index, log, wanted=wanted).load()
        unfiltered = None
        if k.namespaces is not None or k.labels is not None:
            unfiltered = ClusterIndex(implicit_namespaces=True)
            ManifestSource(k.manifests, unfiltered, log).load()
        return index, unfiltered
    from .sources.api import ApiSource, ConfigError, build_api_client
    try:
        client, _ = build_api_client(k.kubeconfig, k.context, args.serviceaccount_dir, endpoint=k.endpoint, tls=k.tls)
    except ConfigError as exc:
        raise bad_config("--kubeconfig", str(exc), exc.fix or "fix the kubeconfig") from None
    kinds = ["Service", "Namespace"] + ([] if k.noendpoints else ["EndpointSlice"]) + \
        (["Pod"] if k.pods == "verified" else [])
    source = ApiSource(client, index, log, kinds, wanted=wanted)
    source.start()
    try:
        deadline = time.monotonic() + API_LIST_TIMEOUT
        while not index.synced and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        source.stop()
    if not index.synced:
        raise bad_config("--kubeconfig", f"the API did not list every resource within {API_LIST_TIMEOUT:g} s: "
                         + source.ready()[1], "check that the API server is reachable and the credentials may list")
    return index, None


def offline_blocks(settings: Settings, index: ClusterIndex, log: Logger, resolv_conf: str) -> list[Block]:
    """The server blocks of the Corefile's first port (or the flags' one block), as the server builds them."""
    from .app import block_parts
    k = settings.kubernetes
    port = settings.blocks[0].port
    per_cache = MemoryBudget().responses
    return [Block(bc, index, AnswerCache(), log, DnsMetrics(), listener=(bc.port, ""),
                  **block_parts(bc, index, log, set(), per_cache, k.zones if k else [], resolv_conf))
            for bc in settings.blocks if bc.port == port]


# ------------------------------------------------------------------------------------------ text


def render(report: dict) -> str:
    """The report as the text `kdns explain` prints."""
    q = report["question"]
    out = [f"kdns explain {q['name']} {q['type']} from {q['from']} (ndots {q['ndots']})"]
    if q["search"]:
        out.append(f"search: {' '.join(q['search'])}")
    out += [f"note: {n}" for n in report["notes"]]
    for i, entry in enumerate(report["queries"], 1):
        head = f"{i}. {entry['name']} {entry['type']} -> {entry['rcode']}"
        if entry["plugin"]:
            head += f" ({entry['plugin']})"
        out.append(head)
        out += [f"   {s}" for s in entry["steps"]]
        for a in entry["answer"]:
            out.append(f"   {a['name']} {a['ttl']} {a['type']} {a['data']}")
            out.append(f"      from {a['source']}")
        if entry["reason"]:
            out.append(f"   why: {entry['reason']}")
        out += [f"   fix: {h}" for h in entry["hints"]]
    final, cost = report["final"], report["cost"]
    if final["ok"]:
        out.append(f"answer: {final['name']} ({final['records']} record{'s' if final['records'] != 1 else ''})")
    else:
        tried = len(report["queries"])
        out.append(f"answer: none{f' of the {tried} names' if tried > 1 else ''} resolved "
                   f"(last: {final['name']} {final['rcode']})")
    if cost["autopath"]:
        out.append("cost: autopath answered server-side; the pod sends 2 queries (A/AAAA)")
    elif cost["names"] > 1:
        line = f"cost: this lookup sends {cost['queries']} queries ({cost['names']} names x A/AAAA)"
        if cost["fqdn"]:
            line += f"; {cost['fqdn']} sends {cost['fqdn_queries']}"
        out.append(line)
        if cost["autopath_would"]:
            out.append(f"      with `autopath @kubernetes` the first query would be answered server-side "
                       f"(CNAME to {cost['autopath_would']}): 2 queries")
    if report["history"]:
        out.append("recent changes:")
        for c in report["history"]:
            ref = f"{c['namespace']}/{c['name']}" if c["namespace"] else c["name"]
            detail = f" ({c['detail']})" if c["detail"] else ""
            out.append(f"   {_age(c['age_seconds'])} ago  {c['kind']} {ref} {c['action']}{detail}")
    return "\n".join(out) + "\n"


def _age(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h"
