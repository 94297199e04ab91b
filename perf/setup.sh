#!/usr/bin/env bash
# Install what the perf/ harness needs on a fresh Debian machine (root or sudo), then check it.
#   - dnsperf            the load generator (perf/loadgen.py is the fallback when it is absent)
#   - knot (knotd)       C baseline #1 (run unprivileged-port, from a temp dir, no systemd)
#   - nsd                C baseline #2
#   - util-linux         taskset (pins server to core 0, load to core 1)
#   - py-spy (in .venv)  sampling profiler for `perf/run.py --profile`
# Idempotent and cheap when everything is already there. Usage: perf/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if [ ! -x .venv/bin/python ]; then
    ./dev setup
fi

missing=()
command -v dnsperf >/dev/null 2>&1 || missing+=(dnsperf)
command -v knotd >/dev/null 2>&1 || missing+=(knot)
{ [ -x /usr/sbin/nsd ] || command -v nsd >/dev/null 2>&1; } || missing+=(nsd)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
command -v dig >/dev/null 2>&1 || missing+=(bind9-dnsutils)

if [ ${#missing[@]} -gt 0 ]; then
    echo "perf/setup.sh: installing ${missing[*]}" >&2
    as_root apt-get update -qq
    # policy-rc.d: the knot and nsd packages try to start their system services; we never want them
    # (the harness runs its own instances on unprivileged loopback ports).
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
        as_root chmod +x /usr/sbin/policy-rc.d
        remove_policy=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [ "${remove_policy:-0}" = 1 ]; then as_root rm -f /usr/sbin/policy-rc.d; fi
    # if a service did get started anyway, stop it: it would hold port 53 and share our cores
    for svc in knot nsd; do
        if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
            as_root systemctl stop "$svc" || true
        fi
    done
fi

.venv/bin/python -m pip install -q --disable-pip-version-check 'py-spy>=0.3' 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" >&2 || true

echo "perf/setup.sh: dnsperf=$(command -v dnsperf || echo missing) knotd=$(command -v knotd || echo missing)" \
     "nsd=$( [ -x /usr/sbin/nsd ] && echo /usr/sbin/nsd || echo missing) taskset=$(command -v taskset || echo missing)" \
     "py-spy=$( [ -x .venv/bin/py-spy ] && echo .venv/bin/py-spy || echo missing)"
