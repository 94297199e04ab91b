#!/usr/bin/env bash
# Self-signed serving certificate for kdns-webhook, without cert-manager:
#   1. `kdns-webhook gen-certs` makes a CA and a certificate for kdns-webhook.kdns-system.svc
#      (the local kdns-webhook if there is one, else the kdns image through docker),
#   2. writes them into Secret kdns-system/kdns-webhook-tls (tls.crt, tls.key, ca.crt),
#   3. puts the CA (gen-certs' stdout) into the MutatingWebhookConfiguration's caBundle.
# Run after `kubectl apply -k deploy/webhook/base`, against the cluster of the current kubectl
# context (or KUBECONFIG). Run again to rotate: with CERT_DIR kept, the CA and so the caBundle stay.
#
# Environment: IMAGE (kdns:dev), NAMESPACE (kdns-system), SERVICE (kdns-webhook),
# SECRET (kdns-webhook-tls), WEBHOOK_CONFIG (kdns-service-links), CERT_DIR (a new temporary
# directory, removed afterwards), KDNS_WEBHOOK (the gen-certs command; default: see 1.).
set -euo pipefail
set -E  # the ERR trap also fires inside functions, so a failure always names its step

IMAGE=${IMAGE:-kdns:dev}
NAMESPACE=${NAMESPACE:-kdns-system}
SERVICE=${SERVICE:-kdns-webhook}
SECRET=${SECRET:-kdns-webhook-tls}
WEBHOOK_CONFIG=${WEBHOOK_CONFIG:-kdns-service-links}

STEP="starting"
step() { STEP=$*; printf 'gen-certs: %s\n' "$*" >&2; }
trap 'printf "gen-certs: FAILED (exit %d) at step: %s\n" "$?" "$STEP" >&2' ERR
die() { printf 'gen-certs: FAILED at step: %s: %s\n' "$STEP" "$*" >&2; exit 1; }

step "checking tools"
command -v kubectl >/dev/null 2>&1 || die "kubectl not found on PATH"

if [ -n "${CERT_DIR:-}" ]; then
    mkdir -p "$CERT_DIR"
    cert_dir=$(cd "$CERT_DIR" && pwd)
else
    cert_dir=$(mktemp -d)
    trap 'rm -rf "$cert_dir"' EXIT
fi

step "generating a CA and a serving certificate for $SERVICE.$NAMESPACE.svc in $cert_dir"
gen=(gen-certs --service "$SERVICE" --namespace "$NAMESPACE")
if [ -n "${KDNS_WEBHOOK:-}" ]; then
    ca_bundle=$($KDNS_WEBHOOK "${gen[@]}" --out "$cert_dir")
elif command -v kdns-webhook >/dev/null 2>&1; then
    ca_bundle=$(kdns-webhook "${gen[@]}" --out "$cert_dir")
else
    command -v docker >/dev/null 2>&1 || die "neither kdns-webhook nor docker found on PATH"
    ca_bundle=$(docker run --rm --user "$(id -u):$(id -g)" -v "$cert_dir:/out" \
        --entrypoint kdns-webhook "$IMAGE" "${gen[@]}" --out /out)
fi
[ -n "$ca_bundle" ] || die "gen-certs printed no caBundle"
for f in ca.crt tls.crt tls.key; do
    [ -s "$cert_dir/$f" ] || die "gen-certs wrote no $cert_dir/$f"
done

step "writing Secret $NAMESPACE/$SECRET"
kubectl -n "$NAMESPACE" create secret generic "$SECRET" --type kubernetes.io/tls \
    --from-file=tls.crt="$cert_dir/tls.crt" --from-file=tls.key="$cert_dir/tls.key" \
    --from-file=ca.crt="$cert_dir/ca.crt" --dry-run=client -o yaml \
    | kubectl apply -f -

step "setting the caBundle of MutatingWebhookConfiguration $WEBHOOK_CONFIG"
count=$(kubectl get mutatingwebhookconfiguration "$WEBHOOK_CONFIG" -o jsonpath='{range .webhooks[*]}x{end}')
[ -n "$count" ] || die "MutatingWebhookConfiguration $WEBHOOK_CONFIG has no webhooks (apply deploy/webhook/base first)"
patch="["
for ((i = 0; i < ${#count}; i++)); do
    [ "$i" -eq 0 ] || patch+=","
    patch+="{\"op\":\"add\",\"path\":\"/webhooks/$i/clientConfig/caBundle\",\"value\":\"$ca_bundle\"}"
done
patch+="]"
kubectl patch mutatingwebhookconfiguration "$WEBHOOK_CONFIG" --type json -p "$patch"

step "done"
printf 'gen-certs: Secret %s/%s and the caBundle of %s are set\n' "$NAMESPACE" "$SECRET" "$WEBHOOK_CONFIG" >&2
