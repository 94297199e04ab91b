# shellcheck shell=bash
# Shared by up.sh, verify.sh, rollback.sh and down.sh: name each step, and on any failure say which
# step broke. Sourced after `set -euo pipefail; set -E`.

KIND_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck disable=SC2034  # used by the scripts that source this file
ROOT=$(cd "$KIND_DIR/../.." && pwd)
SCRIPT=$(basename "$0")
CLUSTER=${CLUSTER:-kdns}
# shellcheck disable=SC2034  # used by the scripts that source this file
IMAGE=${IMAGE:-kdns:dev}
# kind writes the cluster's credentials here, not into ~/.kube/config, and every kubectl below
# uses them: nothing here touches another cluster.
KUBECONFIG=${KDNS_KUBECONFIG:-${TMPDIR:-/tmp}/kdns-kind-$CLUSTER.kubeconfig}
export KUBECONFIG

STEP="starting"
step() {
    STEP=$*
    printf '\n==> %s: %s\n' "$SCRIPT" "$*" >&2
}
on_error() {
    local rc=$?
    printf '\n%s: FAILED (exit %d) at step: %s\n' "$SCRIPT" "$rc" "$STEP" >&2
}
trap on_error ERR
die() {
    printf '\n%s: FAILED at step: %s: %s\n' "$SCRIPT" "$STEP" "$*" >&2
    exit 1
}
need() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (see deploy/README.md)"
    done
}
need_cluster() {
    kind get clusters 2>/dev/null | grep -qx "$CLUSTER" || die "no kind cluster named $CLUSTER (run deploy/kind/up.sh)"
    kind get kubeconfig --name "$CLUSTER" >"$KUBECONFIG"
}
