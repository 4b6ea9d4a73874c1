"""A throwaway PKI for one local cluster, made with the `openssl` command line.

- serving CA and the kube-apiserver serving certificate (SAN localhost, 127.0.0.1);
- client CA and the admin client certificate (CN harness-admin, O system:masters);
- the service-account signing key pair.

Keys are ECDSA P-256; certificates live 30 days (a dev cluster may run for a while).
Kubeconfigs embed their data, so a kubeconfig file is usable on its own.
"""

import base64
import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = "30"


class PkiError(RuntimeError):
    pass


def _openssl(*args: str, cwd: Path) -> None:
    try:
        res = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise PkiError("openssl is not installed (apt-get install -y openssl)") from None
    if res.returncode != 0:
        raise PkiError(f"openssl {' '.join(args)} failed in {cwd}: {res.stderr.strip()}")


@dataclass
class Pki:
    dir: Path

    @property
    def serving_ca(self) -> Path:
        return self.dir / "serving-ca.crt"

    @property
    def serving_cert(self) -> Path:
        return self.dir / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.dir / "apiserver.key"

    @property
    def client_ca(self) -> Path:
        return self.dir / "client-ca.crt"

    @property
    def admin_cert(self) -> Path:
        return self.dir / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.dir / "admin.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"


def _key(name: str, cwd: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", name, cwd=cwd)


def _ca(name: str, cn: str, cwd: Path) -> None:
    _key(f"{name}.key", cwd)
    _openssl(
        "req", "-x509", "-new", "-key", f"{name}.key", "-subj", f"/CN={cn}", "-days", DAYS,
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        "-out", f"{name}.crt", cwd=cwd,
    )


def _leaf(name: str, subj: str, ca: str, extensions: str, cwd: Path) -> None:
    _key(f"{name}.key", cwd)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", subj, "-out", f"{name}.csr", cwd=cwd)
    ext = cwd / f"{name}.ext"
    ext.write_text(extensions)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-days", DAYS, "-extfile", ext.name, "-out", f"{name}.crt", cwd=cwd,
    )
    (cwd / f"{name}.csr").unlink()
    ext.unlink()


def create(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    _ca("serving-ca", "mock-accel-e2e-serving-ca", directory)
    _leaf(
        "apiserver", "/CN=kube-apiserver", "serving-ca",
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=DNS:localhost,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,"
        "DNS:kubernetes.default.svc,IP:10.0.0.1\n",
        directory,
    )
    _ca("client-ca", "mock-accel-e2e-client-ca", directory)
    _leaf(
        "admin", "/O=system:masters/CN=harness-admin", "client-ca",
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=clientAuth\n",
        directory,
    )
    _key("sa.key", directory)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=directory)
    for f in directory.glob("*.key"):
        f.chmod(0o600)
    return Pki(directory)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _kubeconfig(server: str, ca: Path, user_name: str, user_fields: str) -> str:
    return (
        "apiVersion: v1\n"
        "kind: Config\n"
        "clusters:\n"
        "- name: mock-accel-local\n"
        "  cluster:\n"
        f"    server: {server}\n"
        f"    certificate-authority-data: {_b64(ca)}\n"
        "users:\n"
        f"- name: {user_name}\n"
        "  user:\n"
        f"{user_fields}"
        "contexts:\n"
        "- name: mock-accel-local\n"
        "  context:\n"
        "    cluster: mock-accel-local\n"
        f"    user: {user_name}\n"
        "current-context: mock-accel-local\n"
    )


def write_admin_kubeconfig(pki: Pki, server: str, path: Path) -> None:
    fields = (
        f"    client-certificate-data: {_b64(pki.admin_cert)}\n"
        f"    client-key-data: {_b64(pki.admin_key)}\n"
    )
    path.write_text(_kubeconfig(server, pki.serving_ca, "harness-admin", fields))
    path.chmod(0o600)


def write_token_kubeconfig(pki: Pki, server: str, user_name: str, token: str, path: Path) -> None:
    path.write_text(_kubeconfig(server, pki.serving_ca, user_name, f"    token: {token}\n"))
    path.chmod(0o600)
