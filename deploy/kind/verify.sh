#!/usr/bin/env bash
# Check the cluster made by up.sh: the kube-dns Service is served by kdns pods only, a pod resolves
# the Kubernetes conformance DNS names through it over UDP and TCP (verify/probe.sh), and
# kdns-webhook wrote the service-link variables into that pod. Exit 0 only when all of it holds.
# Environment: CLUSTER (kdns), IMAGE (kdns:dev).
set -euo pipefail
set -E  # the ERR trap also fires inside functions
# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NS=kdns-verify

step "checking tools and the cluster"
need kind kubectl
need_cluster
kubectl get nodes >/dev/null

step "checking every pod behind kube-system/kube-dns runs $IMAGE"
# shellcheck disable=SC2016  # a Go template, not shell
selector=$(kubectl -n kube-system get service kube-dns \
    -o go-template='{{range $k, $v := .spec.selector}}{{$k}}={{$v}},{{end}}')
selector=${selector%,}
[ -n "$selector" ] || die "kube-dns has no selector"
images=$(kubectl -n kube-system get pods -l "$selector" \
    -o jsonpath='{range .items[*]}{.metadata.name}={.spec.containers[0].image}{"\n"}{end}')
[ -n "$images" ] || die "no pods match the kube-dns selector $selector"
echo "$images" >&2
while IFS='=' read -r pod image; do
    case "$image" in
        "$IMAGE" | */"$IMAGE") ;;
        *) die "pod $pod behind kube-dns runs $image, not $IMAGE" ;;
    esac
done <<<"$images"

step "checking the kube-dns endpoints are ready kdns pods answering /metrics with kdns_ series"
for pod in $(kubectl -n kube-system get pods -l "$selector" -o jsonpath='{.items[*].metadata.name}'); do
    kubectl -n kube-system wait --for=condition=Ready "pod/$pod" --timeout=120s >/dev/null
    kubectl get --raw "/api/v1/namespaces/kube-system/pods/$pod:9153/proxy/metrics" \
        | grep -q '^kdns_' || die "pod $pod serves no kdns_ metrics on :9153"
done

step "checking kdns-webhook is ready"
kubectl -n kdns-system rollout status deployment/kdns-webhook --timeout=120s
ca_bundle=$(kubectl get mutatingwebhookconfiguration kdns-service-links \
    -o jsonpath='{.webhooks[0].clientConfig.caBundle}')
[ -n "$ca_bundle" ] || die "the MutatingWebhookConfiguration has no caBundle (deploy/webhook/gen-certs.sh)"

step "creating the workloads to resolve (kubectl apply -k deploy/kind/verify)"
kubectl delete pod -n "$NS" dns-probe --ignore-not-found --wait=true
kubectl apply -k "$KIND_DIR/verify"
kubectl -n "$NS" wait --for=condition=Ready pod/dns-querier-1 --timeout=180s

step "creating the probe pod (deploy/kind/verify/probe-pod.yaml)"
kubectl apply -f "$KIND_DIR/verify/probe-pod.yaml"
kubectl -n "$NS" wait --for=condition=Ready pod/dns-probe --timeout=300s

backend_ip=$(kubectl -n "$NS" get pod dns-querier-1 -o jsonpath='{.status.podIP}')
svc_ip=$(kubectl -n "$NS" get service test-service-2 -o jsonpath='{.spec.clusterIP}')
kubernetes_ip=$(kubectl -n default get service kubernetes -o jsonpath='{.spec.clusterIP}')
if [ -z "$backend_ip" ] || [ -z "$svc_ip" ] || [ -z "$kubernetes_ip" ]; then
    die "could not read the addresses to expect (pod $backend_ip, service $svc_ip, kubernetes $kubernetes_ip)"
fi

step "checking kdns-webhook wrote the service-link variables into the probe pod"
env_names=$(kubectl -n "$NS" get pod dns-probe -o jsonpath='{.spec.containers[0].env[*].name}')
case " $env_names " in
    *" TEST_SERVICE_2_SERVICE_HOST "*) ;;
    *) die "the probe pod's spec has no TEST_SERVICE_2_SERVICE_HOST (env: ${env_names:-none})" ;;
esac
links=$(kubectl -n "$NS" get pod dns-probe -o jsonpath='{.spec.enableServiceLinks}')
[ "$links" = false ] || die "enableServiceLinks is '$links', not false"
injected=$(kubectl -n "$NS" exec dns-probe -- printenv TEST_SERVICE_2_SERVICE_HOST)
[ "$injected" = "$svc_ip" ] || die "TEST_SERVICE_2_SERVICE_HOST is '$injected' in the container, not $svc_ip"
echo "TEST_SERVICE_2_SERVICE_HOST=$injected (injected; enableServiceLinks=false)" >&2

step "resolving the conformance DNS names over UDP and TCP (verify/probe.sh in the probe pod)"
kubectl -n "$NS" exec dns-probe -- bash /probe/probe.sh "$NS" "$backend_ip" "$svc_ip" "$kubernetes_ip"

step "done"
echo "verify: kdns answers the conformance names over UDP and TCP, and kdns-webhook injects env" >&2
