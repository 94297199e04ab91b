"""TLS for the webhook: `gen-certs` (a CA and a serving certificate for <svc>.<ns>.svc) and a
server context that picks up a rotated certificate/key pair without a restart.

Rotation: the files are checked every few seconds; a changed pair is loaded into a fresh
SSLContext and, only if the certificate and key load and match, new connections get it (an SNI
callback, which OpenSSL calls for every handshake, with or without SNI, switches the connection
to the current context). A half-written pair (new certificate, old key) is reported and retried
at the next check; the previous pair keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import os
import ssl
import tempfile
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kdns.log import Logger


class CertError(Exception):
    pass


# ------------------------------------------------------------------------------ generation


@dataclass
class GeneratedCerts:
    ca_pem: bytes
    ca_cert: str
    ca_key: str
    tls_cert: str
    tls_key: str
    reused_ca: bool
    dns_names: list[str]

    @property
    def ca_bundle(self) -> str:
        """What a MutatingWebhookConfiguration's clientConfig.caBundle holds: base64 of the CA PEM."""
        return base64.b64encode(self.ca_pem).decode()


def _write(path: str, data: bytes, private: bool = False) -> None:
    """Write-then-rename, so a reader (the webhook's reload check) never sees half a file."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o600 if private else 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def generate(service: str, namespace: str, out_dir: str, cluster_domain: str = "cluster.local",
             hosts: tuple[str, ...] = (), days: int = 365, new_ca: bool = False) -> GeneratedCerts:
    """Write ca.crt, ca.key, tls.crt, tls.key into out_dir. An existing CA there is reused (so
    re-running rotates the serving certificate and the caBundle stays the same) unless new_ca."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, name) for name in ("ca.crt", "ca.key", "tls.crt", "tls.key")}
    now = datetime.datetime.now(datetime.timezone.utc)
    start = now - datetime.timedelta(minutes=5)  # tolerate small clock skew
    reused = not new_ca and os.path.exists(paths["ca.crt"]) and os.path.exists(paths["ca.key"])
    if reused:
        try:
            with open(paths["ca.crt"], "rb") as fh:
                ca_pem = fh.read()
            ca_cert = x509.load_pem_x509_certificate(ca_pem)
            with open(paths["ca.key"], "rb") as fh:
                ca_key = serialization.load_pem_private_key(fh.read(), password=None)
        except (ValueError, TypeError, OSError) as exc:
            raise CertError(f"cannot reuse the CA in {out_dir} ({exc}); use --new-ca") from None
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"kdns-webhook CA for {service}.{namespace}")])
        ca_cert = (x509.CertificateBuilder()
                   .subject_name(ca_name).issuer_name(ca_name)
                   .public_key(ca_key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(start).not_valid_after(now + datetime.timedelta(days=max(days, 1) * 10))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                content_commitment=False, key_encipherment=False,
                                                data_encipherment=False, key_agreement=False,
                                                encipher_only=False, decipher_only=False), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
                   .sign(ca_key, hashes.SHA256()))
        ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
        _write(paths["ca.key"], _key_pem(ca_key), private=True)
        _write(paths["ca.crt"], ca_pem)

    dns_names = [service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
                 f"{service}.{namespace}.svc.{cluster_domain.strip('.')}"]
    ips = []
    for host in hosts:
        try:
            ips.append(ipaddress.ip_address(host))
        except ValueError:
            dns_names.append(host)
    key = ec.generate_private_key(ec.SECP256R1())
    san = [x509.DNSName(n) for n in dict.fromkeys(dns_names)] + [x509.IPAddress(ip) for ip in ips]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{service}.{namespace}.svc")]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(now + datetime.timedelta(days=max(days, 1)))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                         crl_sign=False, content_commitment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    # key first: a reader that sees the new key with the old certificate rejects the pair and retries
    _write(paths["tls.key"], _key_pem(key), private=True)
    _write(paths["tls.crt"], cert.public_bytes(serialization.Encoding.PEM))
    return GeneratedCerts(ca_pem, paths["ca.crt"], paths["ca.key"], paths["tls.crt"], paths["tls.key"], reused,
                          list(dict.fromkeys(dns_names)) + [str(ip) for ip in ips])


# ------------------------------------------------------------------------------ serving


@dataclass(frozen=True)
class CertInfo:
    serial: int
    not_after: float  # unix time
    subject: str


def _signature(path: str) -> tuple | None:
    try:
        st = os.stat(path)  # follows the ..data symlinks of a Secret volume
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)


def load_context(cert_path: str, key_path: str) -> tuple[ssl.SSLContext, CertInfo]:
    """A TLS 1.2+ server context from a PEM certificate (chain) and key; CertError says what is wrong."""
    try:
        with open(cert_path, "rb") as fh:
            cert_pem = fh.read()
    except OSError as exc:
        raise CertError(f"--tls-cert {cert_path}: {exc.strerror or exc}") from None
    try:
        with open(key_path, "rb") as fh:
            key_pem = fh.read()
    except OSError as exc:
        raise CertError(f"--tls-key {key_path}: {exc.strerror or exc}") from None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise CertError(f"--tls-cert {cert_path}: not a PEM certificate ({exc})") from None
    try:
        serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise CertError(f"--tls-key {key_path}: the key is encrypted; give an unencrypted PEM key") from None
    except (ValueError, Exception) as exc:  # noqa: BLE001 - cryptography raises a few kinds here
        raise CertError(f"--tls-key {key_path}: not a PEM private key ({exc})") from None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # load from private copies of the bytes read above, so the context and CertInfo match
    with tempfile.TemporaryDirectory(prefix="kdns-webhook-tls-") as tmp:
        cert_copy, key_copy = os.path.join(tmp, "tls.crt"), os.path.join(tmp, "tls.key")
        for path, data in ((cert_copy, cert_pem), (key_copy, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        try:
            ctx.load_cert_chain(cert_copy, key_copy)
        except ssl.SSLError as exc:
            reason = exc.reason or str(exc)
            if "KEY_VALUES_MISMATCH" in str(exc).upper() or "values mismatch" in str(exc):
                reason = "the key does not match the certificate"
            raise CertError(f"--tls-cert {cert_path} / --tls-key {key_path}: {reason}") from None
    info = CertInfo(cert.serial_number, cert.not_valid_after_utc.timestamp(), cert.subject.rfc4514_string())
    return ctx, info


class ReloadingTLS:
    """The server's SSLContext, following the certificate and key files."""

    def __init__(self, cert_path: str, key_path: str, log: Logger):
        self.cert_path, self.key_path, self.log = cert_path, key_path, log
        self._sig = (_signature(cert_path), _signature(key_path))
        self.server_context, self.info = load_context(cert_path, key_path)  # raises CertError
        self.current = self.server_context
        self.server_context.sni_callback = self._pick
        self.reloads = 0
        self.failures = 0
        self.last_error = ""
        self._failed_sig: tuple | None = None

    def _pick(self, ssl_object: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext) -> None:
        current = self.current
        if ssl_object.context is not current:
            ssl_object.context = current
        return None

    def check(self) -> bool:
        """Reload if the files changed and the new pair is good. Returns True when reloaded."""
        sig = (_signature(self.cert_path), _signature(self.key_path))
        if sig == self._sig:
            return False
        try:
            ctx, info = load_context(self.cert_path, self.key_path)
        except CertError as exc:
            if sig != self._failed_sig:  # once per state of the files, not once per check
                self._failed_sig = sig
                self.failures += 1
                self.last_error = str(exc)
                self.log.error("cert_reload_failed", error=str(exc), serving_serial=f"{self.info.serial:x}")
            return False
        self._sig, self._failed_sig, self.last_error = sig, None, ""
        self.current, self.info = ctx, info
        self.reloads += 1
        self.log.info("cert_reloaded", serial=f"{info.serial:x}", subject=info.subject,
                      not_after=datetime.datetime.fromtimestamp(info.not_after, datetime.timezone.utc).isoformat())
        return True

    async def run(self, interval: float = 2.0) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.check()
            except Exception as exc:  # noqa: BLE001 - never let the checker die
                self.log.error("cert_check_failed", error=repr(exc))
