#!/usr/bin/env bash
# Give the cluster made by up.sh its CoreDNS back, with the same MODE as up.sh:
#   side-by-side: kube-dns selects every k8s-app=kube-dns pod again, then deploy/kdns is deleted
#   swap:         the coredns Deployment goes back to its previous image (rollout undo)
# and kdns-webhook is removed. The commands are the ones deploy/README.md gives for any cluster.
set -euo pipefail
set -E  # the ERR trap also fires inside functions
# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MODE=${MODE:-side-by-side}
case "$MODE" in side-by-side | swap) ;; *) die "MODE must be side-by-side or swap, not $MODE" ;; esac

step "checking tools and the cluster"
need kind kubectl
need_cluster

step "removing kdns-webhook (its configuration first, so no pod creation waits on it)"
kubectl delete mutatingwebhookconfiguration kdns-service-links --ignore-not-found
kubectl delete -k "$ROOT/deploy/webhook/base" --ignore-not-found

if [ "$MODE" = swap ]; then
    step "rolling kube-system/coredns back to its previous image"
    kubectl -n kube-system rollout undo deployment/coredns
    kubectl -n kube-system rollout status deployment/coredns --timeout=180s
else
    step "checking CoreDNS is ready to take kube-dns back"
    kubectl -n kube-system rollout status deployment/coredns --timeout=180s

    step "moving the kube-dns Service back to every k8s-app=kube-dns pod (deploy/side-by-side/select-all.yaml)"
    kubectl -n kube-system patch service kube-dns --type merge \
        --patch-file "$ROOT/deploy/side-by-side/select-all.yaml"

    step "deleting kdns (kubectl delete -k deploy/kdns)"
    kubectl delete -k "$ROOT/deploy/kdns" --ignore-not-found
fi

step "done"
kubectl -n kube-system get pods -l k8s-app=kube-dns -o wide >&2
