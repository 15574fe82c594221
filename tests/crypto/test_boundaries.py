"""The package's boundaries: its public surface, the one home of `cryptography.hazmat`, and
agreement between real processes sharing a keystore."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import domicile.crypto
from domicile.crypto import Envelope, LocalKeyProvider
from tests.crypto.support import context

SRC = Path(domicile.crypto.__file__).resolve().parents[1]  # src/domicile


def test_public_surface_is_exactly_the_documented_names() -> None:
    assert sorted(domicile.crypto.__all__) == [
        "Context", "DataKey", "DecryptionError", "Envelope", "KeyFileError", "KeyNotFound",
        "KeyProvider", "KeyServiceUnavailable", "KeyVersion", "KeyWrapper", "LocalFileWrapper",
        "LocalKeyProvider", "ManagedKeyProvider", "SealGrant", "ShredReceipt",
        "TenantErased", "keystore_path", "write_new_kek",
    ]
    for name in domicile.crypto.__all__:
        assert getattr(domicile.crypto, name)


def test_no_other_package_imports_cryptography_hazmat() -> None:
    offenders = []
    for path in SRC.rglob("*.py"):
        if "crypto" in path.relative_to(SRC).parts[:1]:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            )
            if any(n.startswith("cryptography.hazmat") for n in names):
                offenders.append(str(path.relative_to(SRC)))
    assert offenders == []


def test_a_separate_process_opens_what_this_one_sealed(
    keys: LocalKeyProvider, envelope: Envelope
) -> None:
    ctx = context(tenant="ws_proc")
    key_id = envelope.create_tenant_key("ws_proc")
    sealed = envelope.seal(b"across processes", ctx)
    script = (
        "import sys; from pathlib import Path\n"
        "from domicile.crypto import Context, Envelope, LocalKeyProvider\n"
        "keys = LocalKeyProvider('eu', Path(sys.argv[1]))\n"
        "env = Envelope(keys)\n"
        "ctx = Context('eu', 'ws_proc', 'message', 'msg_1')\n"
        "print(env.create_tenant_key('ws_proc'))\n"
        "print(env.open(bytes.fromhex(sys.argv[2]), ctx).decode())\n"
        "print(env.seal(b'reply', ctx).hex())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(keys.kek_path), sealed.hex()],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.splitlines()
    assert out[0] == key_id
    assert out[1] == "across processes"
    assert envelope.open(bytes.fromhex(out[2]), ctx) == b"reply"
