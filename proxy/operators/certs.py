"""``gemini-breaker certs``: a local certificate authority and a certificate for the sidecar,
made with the ``openssl`` command (run when asked, never at import), so the app can reach the
proxy over ``https://`` / ``wss://`` (the Live API's SDK connects with ``wss://`` only)."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    certs = commands.add_parser(
        "certs", help="make a local CA and a TLS certificate for the proxy (needs openssl)"
    )
    certs.add_argument("--out", required=True, help="directory to write the PEM files to")
    certs.add_argument(
        "--name",
        action="append",
        help="DNS name or IP the certificate is for (repeatable; default: localhost, "
        "127.0.0.1, ::1)",
    )
    certs.add_argument("--days", type=int, default=825, help="validity (default 825 days)")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    made = make_certificates(out, args.name or DEFAULT_NAMES, args.days)
    for name, path in made.items():
        print(f"{name}: {path}")
    print(
        f"serve with server.tls.cert_file={made['cert']} and server.tls.key_file={made['key']}; "
        f"let the app trust the CA: SSL_CERT_FILE={made['ca']}"
    )
    return 0


def subject_alt_names(names: Sequence[str]) -> str:
    """The ``subjectAltName`` value for ``names`` (IP addresses as ``IP:``)."""
    entries = []
    for name in names:
        is_ip = name.replace(".", "").isdigit() or ":" in name
        entries.append(f"{'IP' if is_ip else 'DNS'}:{name}")
    return ",".join(entries)


def make_certificates(out: Path, names: Sequence[str], days: int) -> dict[str, Path]:
    """Write ``ca.pem`` (the CA certificate to trust), ``ca-key.pem``, ``proxy.pem`` and
    ``proxy-key.pem`` (the sidecar's pair) into ``out``; the keys are readable by the owner
    only."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise SystemExit("gemini-breaker certs: the openssl command is needed")
    out.mkdir(parents=True, exist_ok=True)
    ca, ca_key = out / "ca.pem", out / "ca-key.pem"
    cert, key = out / "proxy.pem", out / "proxy-key.pem"

    def run_openssl(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True)

    old_umask = os.umask(0o077)
    try:
        run_openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(ca_key), "-out", str(ca), "-days", str(days),
            "-subj", "/CN=gemini-breaker local CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        with tempfile.TemporaryDirectory() as work:
            csr, ext = Path(work) / "proxy.csr", Path(work) / "ext.cnf"
            ext.write_text(
                f"subjectAltName={subject_alt_names(names)}\n"
                "basicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=serverAuth\n"
            )
            run_openssl(
                "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={names[0]}",
            )  # fmt: skip
            run_openssl(
                "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
                "-CAcreateserial", "-CAserial", str(Path(work) / "ca.srl"),
                "-out", str(cert), "-days", str(days), "-extfile", str(ext),
            )  # fmt: skip
    finally:
        os.umask(old_umask)
    ca.chmod(0o644)
    cert.chmod(0o644)
    return {"ca": ca, "ca_key": ca_key, "cert": cert, "key": key}
