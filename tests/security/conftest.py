"""Helpers of the security tests: a ``marketprism`` component as a real process with extra environment,
its ``/metrics`` scraped over loopback, dead letters read back from the broker, and a throwaway CA."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pipeline.contracts import DeadLetter, decoder_for
from pipeline.kafka.clients import make_consumer
from pipeline.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def component(
    settings: Settings, log_path: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``marketprism <args>`` on the test's broker, prefix and state dir; stopped by PID."""
    full_env = os.environ | {
        "MARKETPRISM_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "MARKETPRISM_TOPIC_PREFIX": settings.topic_prefix,
        "MARKETPRISM_STATE_DIR": str(settings.state_dir),
        "MARKETPRISM_CLICKHOUSE_URL": str(settings.clickhouse_url),
        "MARKETPRISM_METRICS_PORT": "0",
        "MARKETPRISM_LOG_LEVEL": "INFO",
    }
    exe = Path(sys.executable).parent / "marketprism"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [str(exe), *args], cwd=ROOT, env=full_env | (env or {}), stdout=log, stderr=subprocess.STDOUT
        )
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def scrape(port: int, until: Callable[[str], bool] = lambda _: True, timeout_s: float = 120.0) -> str:
    """``/metrics`` of a process on 127.0.0.1, once ``until(text)`` holds (polled: the process may still start)."""
    text = ""
    async with httpx.AsyncClient() as client, asyncio.timeout(timeout_s):
        while True:
            try:
                text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
            except httpx.TransportError:
                text = ""
            if text and until(text):
                return text
            await asyncio.sleep(0.5)


def metric_value(text: str, line_prefix: str) -> float:
    """The value of the sample line starting with ``line_prefix`` (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(line_prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def dead_letters(
    settings: Settings, until: Callable[[list[DeadLetter]], bool], timeout_s: float
) -> list[DeadLetter]:
    """Dead letters of the test's prefix read from the beginning until ``until(letters)`` holds."""
    decode = decoder_for(DeadLetter).decode
    consumer = make_consumer(settings.kafka, settings.topic("ops.dlq.v1"), group_id=None)
    await consumer.start()
    letters: list[DeadLetter] = []
    try:
        async with asyncio.timeout(timeout_s):
            while not until(letters):
                for messages in (await consumer.getmany(timeout_ms=500)).values():
                    letters += [decode(m.value) for m in messages if m.value]
    finally:
        await consumer.stop()
    return letters


@dataclass(frozen=True)
class Pki:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM files."""

    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context


def make_pki(directory: Path) -> Pki:
    """A CA generated for one test (never committed) and a server certificate it signed."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "marketprism test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(name: str, usage: x509.ObjectIdentifier, san: list[x509.GeneralName]) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        pem_key = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cert.public_bytes(serialization.Encoding.PEM), pem_key

    server_san: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    pki = Pki(*(directory / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")))
    pki.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    for (cert_path, key_path), (cert_pem, key_pem) in (
        ((pki.cert, pki.key), leaf("localhost", ExtendedKeyUsageOID.SERVER_AUTH, server_san)),
        ((pki.client_cert, pki.client_key), leaf("marketprism-client", ExtendedKeyUsageOID.CLIENT_AUTH, [])),
    ):
        cert_path.write_bytes(cert_pem)
        key_path.write_bytes(key_pem)
        key_path.chmod(0o600)
    return pki
