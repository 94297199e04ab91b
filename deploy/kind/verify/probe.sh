#!/usr/bin/env bash
# Runs inside the dns-probe pod (deploy/kind/verify.sh copies nothing: it is mounted from the
# dns-probe ConfigMap). Resolves the names the Kubernetes conformance DNS tests resolve
# (test/e2e/network/dns.go), each with dig over UDP (+notcp) and over TCP (+tcp), through the
# pod's own resolv.conf: the kube-dns Service as nameserver, <ns>.svc.cluster.local
# svc.cluster.local cluster.local as search path. Exit 1 when any answer is wrong.
#   probe.sh NAMESPACE BACKEND_POD_IP CLUSTERIP_SERVICE_IP KUBERNETES_SERVICE_IP
set -euo pipefail

[ $# -eq 4 ] || { echo "usage: probe.sh NAMESPACE BACKEND_POD_IP SERVICE_IP KUBERNETES_IP" >&2; exit 2; }
ns=$1
backend_ip=$2
svc_ip=$3
kubernetes_ip=$4
checks=0
fails=0

# check PROTO NAME TYPE WANT [dig options]: the sorted short answer must be WANT; retried for a
# few seconds, since a just-created endpoint reaches kdns through a watch.
check() {
    local proto=$1 name=$2 type=$3 want=$4 got="" attempt
    shift 4
    for attempt in 1 2 3 4 5 6; do
        got=$(dig "+$proto" +short +tries=1 +time=2 "$@" "$name" "$type" 2>&1 | grep -v '^;' | sort | paste -sd ' ' -) || true
        [ "$got" = "$want" ] && break
        if [ "$attempt" -lt 6 ]; then sleep 2; fi
    done
    checks=$((checks + 1))
    if [ "$got" = "$want" ]; then
        printf 'ok    %-5s %-5s %s -> %s\n' "$proto" "$type" "$name" "$got"
    else
        printf 'FAIL  %-5s %-5s %s: got [%s], want [%s]\n' "$proto" "$type" "$name" "$got" "$want"
        fails=$((fails + 1))
    fi
}

# status PROTO NAME WANT_RCODE
status() {
    local proto=$1 name=$2 want=$3 got
    got=$(dig "+$proto" +tries=1 +time=2 "$name" A 2>&1 | sed -n 's/.*status: \([A-Z]*\),.*/\1/p') || true
    checks=$((checks + 1))
    if [ "$got" = "$want" ]; then
        printf 'ok    %-5s %-5s %s -> %s\n' "$proto" "rcode" "$name" "$got"
    else
        printf 'FAIL  %-5s %-5s %s: got [%s], want [%s]\n' "$proto" "rcode" "$name" "$got" "$want"
        fails=$((fails + 1))
    fi
}

IFS=. read -r o1 o2 o3 o4 <<<"$svc_ip"
svc_ptr="$o4.$o3.$o2.$o1.in-addr.arpa"
backend_dashed=${backend_ip//./-}
zone=cluster.local
headless=dns-test-service.$ns.svc.$zone
clusterip=test-service-2.$ns.svc.$zone

for proto in notcp tcp; do
    # the kubernetes Service, fully qualified and through the search path
    check "$proto" "kubernetes.default.svc.$zone" A "$kubernetes_ip"
    check "$proto" kubernetes.default A "$kubernetes_ip" +search
    check "$proto" kubernetes.default.svc A "$kubernetes_ip" +search
    # headless Service: its ready endpoint; partial names through the search path
    check "$proto" "$headless" A "$backend_ip"
    check "$proto" dns-test-service A "$backend_ip" +search
    check "$proto" "dns-test-service.$ns" A "$backend_ip" +search
    check "$proto" "dns-test-service.$ns.svc" A "$backend_ip" +search
    # SRV of named ports: headless (per endpoint) and ClusterIP
    check "$proto" "_http._tcp.$headless" SRV "0 100 80 dns-querier-1.$headless."
    check "$proto" "_http._tcp.$clusterip" SRV "0 100 80 $clusterip."
    # ClusterIP Service: A, partial name, PTR of its ClusterIP
    check "$proto" "$clusterip" A "$svc_ip"
    check "$proto" test-service-2 A "$svc_ip" +search
    check "$proto" "$svc_ptr" PTR "$clusterip."
    # pod A record (pods insecure) and hostname.subdomain of a pod behind the headless Service
    check "$proto" "$backend_dashed.$ns.pod.$zone" A "$backend_ip"
    check "$proto" "dns-querier-1.$headless" A "$backend_ip"
    # ExternalName
    check "$proto" "dns-test-service-3.$ns.svc.$zone" CNAME "foo.example.com."
    # the spec's version record, and a name that does not exist
    check "$proto" "dns-version.$zone" TXT '"1.1.0"'
    status "$proto" "no-such-service.$ns.svc.$zone" NXDOMAIN
done

# the C library's resolver, as the conformance tests' getent checks
checks=$((checks + 1))
got=$(getent hosts "$headless" | awk '{print $1}' | paste -sd ' ' -) || true
if [ "$got" = "$backend_ip" ]; then
    printf 'ok    %-5s %-5s %s -> %s\n' libc hosts "$headless" "$got"
else
    printf 'FAIL  %-5s %-5s %s: got [%s], want [%s]\n' libc hosts "$headless" "$got" "$backend_ip"
    fails=$((fails + 1))
fi

printf '%d checks, %d failed\n' "$checks" "$fails"
[ "$fails" -eq 0 ]
