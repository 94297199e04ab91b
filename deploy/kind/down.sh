#!/usr/bin/env bash
# Delete the kind cluster made by up.sh (and its kubeconfig file). CLUSTER=kdns by default.
set -euo pipefail
set -E  # the ERR trap also fires inside functions
# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

step "checking tools"
need kind

step "deleting kind cluster $CLUSTER"
kind delete cluster --name "$CLUSTER"
rm -f "$KUBECONFIG"

step "done"
