"""`bind`: server blocks sharing a port on different addresses (IPv4, IPv6, interface names, except), queried
over UDP and TCP on 127.0.0.2 etc.; a reload re-binds only the addresses that changed."""

from __future__ import annotations

import re
import socket
import time

import dns.message
import dns.query
import pytest

from harness import answers, wait_until
from test_dropin import start

TWO = """.:53 {
    bind 127.0.0.1
    hosts {
        10.0.0.1 who.example
    }
}
.:53 {
    bind 127.0.0.2 127.0.0.3
    hosts {
        10.0.0.2 who.example
    }
}
"""


def ask(host: str, port: int, name: str = "who.example", tcp: bool = False) -> list[str]:
    msg = dns.message.make_query(name, "A")
    query = dns.query.tcp if tcp else dns.query.udp
    return answers(query(msg, host, port=port, timeout=3))


def listening(kdns) -> dict[str, int]:
    """address -> port of every 'listening' line."""
    out = {}
    for line in kdns.lines:
        m = re.search(r"INFO listening .*udp=(\S+):(\d+) ", line)
        if m:
            out[m.group(1).strip("[]")] = int(m.group(2))
    return out


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_blocks_on_one_port_with_different_binds(tmp_path, tcp):
    with start(tmp_path, TWO) as kdns:
        wait_until(lambda: len(listening(kdns)) == 3, what="three listeners")
        ports = listening(kdns)
        assert len(set(ports.values())) == 1  # one Corefile port: the same port on every address
        port = ports["127.0.0.1"]
        assert ask("127.0.0.1", port, tcp=tcp) == ["10.0.0.1"]
        assert ask("127.0.0.2", port, tcp=tcp) == ["10.0.0.2"]
        assert ask("127.0.0.3", port, tcp=tcp) == ["10.0.0.2"]


def test_interface_names_ipv6_and_except(tmp_path):
    text = """.:53 {
    bind lo {
        except 127.0.0.1
    }
    hosts {
        10.0.0.9 who.example
    }
}
.:53 {
    bind 127.0.0.1
    hosts {
        10.0.0.1 who.example
    }
}
"""
    with start(tmp_path, text) as kdns:
        wait_until(lambda: len(listening(kdns)) == 2, what="two listeners")
        ports = listening(kdns)
        assert set(ports) == {"127.0.0.1", "::1"}  # lo's addresses, 127.0.0.1 excepted from the first block
        assert ask("::1", ports["::1"]) == ["10.0.0.9"] and ask("::1", ports["::1"], tcp=True) == ["10.0.0.9"]
        assert ask("127.0.0.1", ports["127.0.0.1"]) == ["10.0.0.1"]


def test_reload_rebinds_only_what_changed(tmp_path):
    text = TWO.replace("    bind 127.0.0.1\n", "    bind 127.0.0.1\n    reload 2s 1s\n")
    with start(tmp_path, text) as kdns:
        wait_until(lambda: len(listening(kdns)) == 3, what="three listeners")
        port = listening(kdns)["127.0.0.1"]
        # a TCP connection to the address that stays must survive the reload
        conn = socket.create_connection(("127.0.0.1", port), timeout=5)
        (tmp_path / "Corefile").write_text(text.replace("bind 127.0.0.2 127.0.0.3", "bind 127.0.0.2 127.0.0.4"))
        kdns.wait_for_log(r"INFO reloaded ", timeout=20)
        log = "\n".join(kdns.lines)
        assert re.search(r"listener_closed .*address=127\.0\.0\.3:", log)
        assert re.search(r"listener_opened .*address=127\.0\.0\.4:", log)
        assert not re.search(r"listener_(closed|opened) .*address=127\.0\.0\.[12]:", log)
        assert ask("127.0.0.4", port) == ["10.0.0.2"] and ask("127.0.0.2", port, tcp=True) == ["10.0.0.2"]
        dns.query.send_tcp(conn, dns.message.make_query("who.example", "A"))
        reply, _ = dns.query.receive_tcp(conn, time.time() + 5)
        assert answers(reply) == ["10.0.0.1"]
        conn.close()
