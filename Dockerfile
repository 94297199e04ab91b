# kdns and kdns-webhook in one image.
#
#   docker build -t kdns:dev .
#
# The entrypoint is `kdns` and the default arguments are the coredns image's (`-conf
# /etc/coredns/Corefile`), so a kubeadm/kind `coredns` Deployment needs only its image changed.
# The same image runs the webhook with `command: ["kdns-webhook"]`.
#
# Runs as UID/GID 65532 (as the coredns image does) with a read-only root file system: Python
# writes no .pyc files (PYTHONDONTWRITEBYTECODE=1, everything is compiled here) and kdns writes
# nothing else; the Deployments still mount an emptyDir at /tmp for anything a library might want.
# tests/test_deploy.py lints this file with hadolint and runs ENTRYPOINT + CMD outside a container.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------- build: a venv in /opt/kdns
FROM ${PYTHON_IMAGE} AS build

# setcap only; this stage is thrown away. Unpinned: Debian's stable security updates are wanted.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libcap2-bin \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY kdns/ kdns/
COPY webhook/ webhook/

# The project itself with uvloop (the "fast" extra), at the versions pyproject.toml allows; then no
# pip/setuptools at run time.
RUN python -m venv /opt/kdns \
    && /opt/kdns/bin/pip install --no-cache-dir --no-compile ".[fast]" \
    && /opt/kdns/bin/pip uninstall -y pip setuptools

# Binding port 53 as UID 65532: like the coredns binary, the interpreter that runs kdns carries the
# file capability cap_net_bind_service (effective only when the container keeps NET_BIND_SERVICE,
# which the kubeadm Deployment adds). It is a copy of the interpreter used only by `kdns`: the
# webhook (port 8443) runs the plain one and can drop every capability. The copy sits in the venv's
# bin/, so it finds /opt/kdns/pyvenv.cfg and uses the venv like the symlinked `python` does.
RUN cp "$(readlink -f /opt/kdns/bin/python)" /opt/kdns/bin/python-netbind \
    && setcap cap_net_bind_service=+ep /opt/kdns/bin/python-netbind \
    && sed -i '1s|^#!.*|#!/opt/kdns/bin/python-netbind|' /opt/kdns/bin/kdns \
    && /opt/kdns/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/kdns/lib

# ---------------------------------------------------------------------------- run
FROM ${PYTHON_IMAGE}

# The base image ships the standard library without .pyc files; compile them once here, since a
# read-only root file system means Python could never cache them.
RUN python -m compileall -q -j 0 --invalidation-mode unchecked-hash "$(python -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')"

# COPY keeps python-netbind's security.capability attribute, as the coredns image relies on.
COPY --from=build /opt/kdns /opt/kdns

ENV PATH=/opt/kdns/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp

# Fail the build rather than the pod if the image cannot start as its user: as UID 65532 the
# capability-carrying interpreter runs in secure-execution mode (libpython then comes from
# ld.so.cache, the venv from /opt/kdns/pyvenv.cfg).
RUN setpriv --reuid=65532 --regid=65532 --clear-groups kdns -version \
    && setpriv --reuid=65532 --regid=65532 --clear-groups kdns-webhook --help >/dev/null

USER 65532:65532
WORKDIR /
# DNS, health, ready, metrics (kdns); HTTPS (kdns-webhook)
EXPOSE 53/udp 53/tcp 8080/tcp 8181/tcp 9153/tcp 8443/tcp

ENTRYPOINT ["kdns"]
CMD ["-conf", "/etc/coredns/Corefile"]
