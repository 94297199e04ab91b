"""Kubernetes v1 objects as the API serves them (plain dicts), for the API double and the webhook tests."""

from __future__ import annotations


def namespace(name: str, **labels: str) -> dict:
    return {"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": name, "labels": labels}}


def _port(p: tuple) -> dict:
    """(port,), (port, protocol) or (name, port, protocol) as a ServicePort."""
    if len(p) == 1:
        return {"port": p[0]}
    if len(p) == 2:
        return {"port": p[0], "protocol": p[1]}
    return {"name": p[0], "port": p[1], "protocol": p[2]}


def service(ns: str, name: str, ip: str | None = None, ports=(("http", 80, "TCP"),), labels: dict | None = None,
            external_name: str | None = None, ips: list[str] | None = None, type_: str | None = None) -> dict:
    """A v1 Service: ClusterIP `ip` ("None": headless; `ips` for dual stack), or ExternalName."""
    spec: dict = {"ports": [_port(p) for p in ports]}
    if external_name:
        spec.update(type="ExternalName", externalName=external_name)
    else:
        spec.update(clusterIP=ip, clusterIPs=ips or [ip])
        if type_:
            spec["type"] = type_
    return {"kind": "Service", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": ns, "labels": labels or {}}, "spec": spec}
