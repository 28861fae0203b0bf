"""Authenticated records for state the pipeline reads back from its own topics (checkpoints).

Anyone who can write a topic can write a record that looks like a checkpoint. A sealed record carries an
HMAC-SHA256 tag over a purpose label and the payload, under the key from ``security.checkpoint_key`` (or the
key file); :meth:`Sealer.open` refuses a record whose tag is missing or wrong, or that is larger than the
bound, *before* anything decompresses or decodes it. The purpose label keeps a record sealed for one use
(e.g. anomaly models) from being accepted for another (the rule engine's state).

Layout: ``b"MPS1" + tag (32 bytes) + payload``. Rotation: verify under the current and the previous keys,
seal under the current one (``SecuritySettings`` says how to rotate).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from pipeline.kafka.errors import KafkaPlumbingError
from pipeline.settings import Settings

log = logging.getLogger(__name__)

MAGIC = b"MPS1"
TAG_BYTES = 32
KEY_FILE = Path("secrets") / "checkpoint.key"


class SealError(KafkaPlumbingError, ValueError):
    """A sealed record was refused; ``reason`` names why (``too_large``, ``unsealed``, ``bad_tag``)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class Sealer:
    """Seals and opens records for one purpose under one current key (plus older keys still accepted)."""

    def __init__(self, purpose: str, key: bytes, previous: Sequence[bytes] = (), max_bytes: int = 64 * 1024 * 1024):
        if len(key) < 16:
            raise ValueError("a sealing key needs at least 16 bytes")
        self.purpose = purpose.encode()
        self._keys = [key, *previous]
        self.max_bytes = max_bytes

    def tag(self, payload: bytes, key: bytes | None = None) -> bytes:
        return hmac.new(key or self._keys[0], self.purpose + b"\0" + payload, hashlib.sha256).digest()

    def seal(self, payload: bytes) -> bytes:
        return MAGIC + self.tag(payload) + payload

    def verify(self, payload: bytes, tag: bytes) -> bool:
        """Whether ``tag`` authenticates ``payload`` under any accepted key (constant-time comparison)."""
        return any(hmac.compare_digest(self.tag(payload, key), tag) for key in self._keys)

    def open(self, blob: bytes) -> bytes:
        """The payload of a sealed record; :class:`SealError` when it is too large, unsealed or forged."""
        if len(blob) > self.max_bytes + len(MAGIC) + TAG_BYTES:
            raise SealError("too_large", f"sealed record of {len(blob)} bytes exceeds {self.max_bytes}")
        if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + TAG_BYTES:
            raise SealError("unsealed", "record is not sealed (no MPS1 header)")
        tag, payload = blob[len(MAGIC) : len(MAGIC) + TAG_BYTES], blob[len(MAGIC) + TAG_BYTES :]
        if not self.verify(payload, tag):
            raise SealError("bad_tag", "record's authentication tag does not verify under any accepted key")
        return payload


def _host_key(state_dir: Path) -> bytes:
    """This host's generated key (created once, mode 0600) for deployments that configure none."""
    path = state_dir / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        staging = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
        try:
            os.link(staging, path)  # atomic and exclusive: a process of this host that came first wins
            log.warning(
                "no security.checkpoint_key configured: generated %s (workers on other hosts need the same key)", path
            )
        except FileExistsError:
            pass
        finally:
            staging.unlink()
    return path.read_text().strip().encode()


def sealer_for(settings: Settings, purpose: str) -> Sealer:
    """The sealer for ``purpose`` under the configured key (or this host's generated one)."""
    security = settings.security
    key = (
        security.checkpoint_key.get_secret_value().encode()
        if security.checkpoint_key is not None
        else _host_key(settings.state_dir)
    )
    previous = [k.get_secret_value().encode() for k in security.checkpoint_previous_keys]
    return Sealer(purpose, key, previous, security.checkpoint_max_bytes)
