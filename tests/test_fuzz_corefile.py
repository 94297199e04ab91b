"""Fuzzing the Corefile parser and validator: every input either loads or raises CorefileError
naming file:line:column with a message, never another exception, and quickly. Inputs: token-level
mutations of the kubeadm Corefiles and a rich one (every directive kdns supports), character- and
line-level damage, and random token soups (fuzz_data.py, shared with perf/fuzz.py).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzz_data import COREFILE_GENERATORS, COREFILES, check_corefile
from fuzz_dns import fuzz_settings
from harness import ROOT
from kdns.config import settings_from_corefile
from kdns.corefile import CorefileError



@pytest.fixture(scope="module")
def resolv(tmp_path_factory):
    path = tmp_path_factory.mktemp("corefile") / "resolv.conf"
    path.write_text("nameserver 192.0.2.53\nsearch corp.example\n")
    return str(path)


def test_the_seed_corefiles_load(resolv):
    for text in COREFILES:
        assert settings_from_corefile(text, "Corefile", resolv_conf=resolv).blocks


@pytest.mark.parametrize("kind", sorted(COREFILE_GENERATORS))
@fuzz_settings(400)
@given(rng=st.randoms(use_true_random=False))
def test_generated_corefiles(resolv, kind, rng):
    text = COREFILE_GENERATORS[kind](rng)
    problem = check_corefile(text, resolv)
    assert problem is None, f"{problem}\ninput: {text!r}"


@fuzz_settings(300)
@given(text=st.text(max_size=300))
def test_any_text(resolv, text):
    problem = check_corefile(text, resolv)
    assert problem is None, f"{problem}\ninput: {text!r}"


@fuzz_settings(300)
@given(text=st.text(alphabet=st.sampled_from(list("{}\"#\\,.:$%\n \t53abc")), max_size=80))
def test_syntax_characters(resolv, text):
    problem = check_corefile(text, resolv)
    assert problem is None, f"{problem}\ninput: {text!r}"


# ---------------------------------------------------------------- bugs found by fuzzing (fail until fixed)

BUGS = {
    # kdns/corefile.py parse(): a key token that is only commas leaves `keys` empty, then keys[-1]
    "comma-only server block key": (",\n", IndexError),
    # kdns/config.py parse_key(): str.isdigit() accepts '²' and other Unicode digits that int() rejects
    "unicode-digit port": (".:² {\n}\n", ValueError),
    # ... and int() rejects more than 4300 digits (sys.set_int_max_str_digits)
    "5000-digit port": (".:" + "9" * 5000 + " {\n}\n", ValueError),
    # kdns/config.py _forward(): open() of a path with a NUL raises ValueError, not OSError
    "NUL in a forward path": (".:53 {\n    forward . /etc/\x00resolv.conf\n}\n", ValueError),
    # kdns/config.py read_resolv_conf(): a binary file raises UnicodeDecodeError
    "binary forward target": (".:53 {\n    forward . BINARY\n}\n", UnicodeDecodeError),
    # kdns/config.py _acl(): an unknown type makes dnslib's QTYPE raise DNSError, not AttributeError
    "unknown acl type": (".:53 {\n    acl {\n        block type NOPE\n    }\n}\n", Exception),
}


@pytest.mark.parametrize("name", list(BUGS))
def test_bug_every_bad_corefile_is_a_corefile_error(resolv, tmp_path, name):
    """BUG (fuzz): each of these raises the named exception instead of CorefileError."""
    text, _ = BUGS[name]
    binary = tmp_path / "resolv.bin"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\x00\x88\xff\xfe" * 10)
    text = text.replace("BINARY", str(binary))
    with pytest.raises(CorefileError) as err:
        settings_from_corefile(text, "Corefile", resolv_conf=resolv)
    assert err.value.line >= 1 and err.value.message


def test_bug_check_config_prints_no_traceback(tmp_path):
    """BUG (fuzz): `kdns check-config` on such a file prints a Python traceback instead of
    file:line:col (exit 1)."""
    path = tmp_path / "Corefile"
    path.write_text(".:² {\n}\n")
    out = subprocess.run([sys.executable, "-m", "kdns", "check-config", str(path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=30, env=dict(os.environ, PYTHONPATH=ROOT))
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == 1 and f"{path}:1:" in out.stderr
