#!/usr/bin/env bash
# Create a kind cluster whose cluster DNS is kdns and which runs kdns-webhook:
#   deploy/kind/up.sh                  # side-by-side (default): deploy/kdns, then kube-dns -> kdns
#   MODE=swap deploy/kind/up.sh        # the coredns Deployment runs the kdns image instead
# Then deploy/kind/verify.sh, and deploy/kind/down.sh (or rollback.sh to go back to CoreDNS).
# Needs docker, kind and kubectl. Environment: CLUSTER (kdns), IMAGE (kdns:dev), MODE,
# WEBHOOK_CERTS (self-signed | cert-manager: then cert-manager must already run in the cluster).
set -euo pipefail
set -E  # the ERR trap also fires inside functions
# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MODE=${MODE:-side-by-side}
WEBHOOK_CERTS=${WEBHOOK_CERTS:-self-signed}
case "$MODE" in side-by-side | swap) ;; *) die "MODE must be side-by-side or swap, not $MODE" ;; esac
case "$WEBHOOK_CERTS" in self-signed | cert-manager) ;; *) die "WEBHOOK_CERTS must be self-signed or cert-manager" ;; esac

step "checking tools"
need docker kind kubectl
docker info >/dev/null 2>&1 || die "docker is installed but its engine does not answer (docker info)"

step "creating kind cluster $CLUSTER (deploy/kind/cluster.yaml)"
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    echo "kind cluster $CLUSTER exists; reusing it" >&2
    kind get kubeconfig --name "$CLUSTER" >"$KUBECONFIG"
else
    kind create cluster --name "$CLUSTER" --config "$KIND_DIR/cluster.yaml" --kubeconfig "$KUBECONFIG" --wait 180s
fi

step "building image $IMAGE"
docker build -t "$IMAGE" "$ROOT"

step "loading $IMAGE into the kind nodes"
kind load docker-image "$IMAGE" --name "$CLUSTER"

step "waiting for the cluster's CoreDNS (kube-system/coredns)"
kubectl -n kube-system rollout status deployment/coredns --timeout=180s

if [ "$MODE" = swap ]; then
    step "swapping the image of kube-system/coredns for $IMAGE (deploy/swap/kdns-image.yaml)"
    kubectl -n kube-system patch deployment coredns --patch-file "$ROOT/deploy/swap/kdns-image.yaml"
    if [ "$IMAGE" != kdns:dev ]; then
        kubectl -n kube-system set image deployment/coredns coredns="$IMAGE"
    fi

    step "waiting for kube-system/coredns to run kdns"
    kubectl -n kube-system rollout status deployment/coredns --timeout=180s
else
    step "deploying kdns next to CoreDNS (kubectl apply -k deploy/kdns)"
    kubectl apply -k "$ROOT/deploy/kdns"
    if [ "$IMAGE" != kdns:dev ]; then
        kubectl -n kube-system set image deployment/kdns kdns="$IMAGE"
    fi

    step "waiting for kube-system/kdns"
    kubectl -n kube-system rollout status deployment/kdns --timeout=180s

    step "moving the kube-dns Service to kdns (deploy/side-by-side/select-kdns.yaml)"
    kubectl -n kube-system patch service kube-dns --type merge \
        --patch-file "$ROOT/deploy/side-by-side/select-kdns.yaml"
fi

if [ "$WEBHOOK_CERTS" = cert-manager ]; then
    step "checking cert-manager is installed"
    kubectl get crd certificates.cert-manager.io >/dev/null 2>&1 \
        || die "cert-manager's CRDs are not installed (see deploy/README.md)"

    step "deploying kdns-webhook with a cert-manager certificate (kubectl apply -k deploy/webhook/cert-manager)"
    kubectl apply -k "$ROOT/deploy/webhook/cert-manager"
else
    step "deploying kdns-webhook (kubectl apply -k deploy/webhook/base)"
    kubectl apply -k "$ROOT/deploy/webhook/base"

    step "provisioning the webhook's certificate (deploy/webhook/gen-certs.sh)"
    IMAGE="$IMAGE" "$ROOT/deploy/webhook/gen-certs.sh"
fi
if [ "$IMAGE" != kdns:dev ]; then
    kubectl -n kdns-system set image deployment/kdns-webhook webhook="$IMAGE"
fi

step "waiting for kdns-system/kdns-webhook"
kubectl -n kdns-system rollout status deployment/kdns-webhook --timeout=180s

step "done"
cat >&2 <<MSG
kind cluster $CLUSTER: cluster DNS is kdns ($MODE), kdns-webhook runs in kdns-system.
  export KUBECONFIG=$KUBECONFIG
  $KIND_DIR/verify.sh      # conformance DNS names over UDP and TCP, and the injected env
MSG
