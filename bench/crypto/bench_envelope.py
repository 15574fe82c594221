"""Envelope encryption overhead against one raw AES-GCM call on the same buffer.

    .venv/bin/python bench/crypto/bench_envelope.py [--repeat 15] [--json]

For each case, every repetition times the raw `AESGCM.encrypt`/`decrypt` call (fixed nonce, no
associated data: the floor) and the envelope call back to back, so both see the same machine
state; the reported times are medians over repetitions and the ratio is raw time / envelope
time (1.0 = as fast as the raw call). Targets: >= 0.70 at 1 MiB, >= 0.40 at 1 KiB.

The envelope also pays for a fresh random nonce (`os.urandom(12)` alone is printed for scale),
its header and the context binding; the raw call pays for none of these.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import timeit
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cryptography
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from domicile.crypto import Context, Envelope, LocalKeyProvider, write_new_kek

KIB = 1024
MIB = 1024 * 1024
TARGETS = {KIB: 0.40, MIB: 0.70}


def per_call(stmt: str, names: dict[str, Any], number: int) -> float:
    # Statements as strings: timeit inlines them in its loop, so neither side pays for an
    # extra Python call (a lambda would add ~40 ns to both, flattering the 1 KiB ratio).
    return timeit.Timer(stmt, globals=names).timeit(number) / number


def measure(
    raw: str, env: str, names: dict[str, Any], number: int, repeat: int
) -> dict[str, float]:
    raw_t, env_t, ratios = [], [], []
    per_call(raw, names, number), per_call(env, names, number)  # warm up (caches, allocator)
    for _ in range(repeat):
        r, e = per_call(raw, names, number), per_call(env, names, number)
        raw_t.append(r)
        env_t.append(e)
        ratios.append(r / e)
    return {
        "raw_us": statistics.median(raw_t) * 1e6,
        "envelope_us": statistics.median(env_t) * 1e6,
        "ratio": statistics.median(ratios),
    }


def drain(it: Iterable[bytes]) -> None:
    for _ in it:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        kek = Path(tmp) / "kek.key"
        write_new_kek(kek)
        keys = LocalKeyProvider("eu", kek)
        envelope = Envelope(keys)
        envelope.create_tenant_key("ws_bench")
        ctx = Context(region="eu", tenant="ws_bench", kind="message", record_id="msg_0123456789")
        raw = AESGCM(AESGCM.generate_key(256))
        nonce = os.urandom(12)
        small, big = os.urandom(KIB), os.urandom(MIB)
        names: dict[str, Any] = {
            "seal": envelope.seal, "open_": envelope.open,
            "seal_blob": envelope.seal_blob, "open_blob": envelope.open_blob,
            "seal_stream": envelope.seal_stream, "open_stream": envelope.open_stream,
            "enc": raw.encrypt, "dec": raw.decrypt, "urandom": os.urandom,
            "drain": drain, "nonce": nonce, "ctx": ctx, "small": small, "big": big,
        }
        names["small_ct"], names["big_ct"] = raw.encrypt(nonce, small, None), raw.encrypt(
            nonce, big, None)
        names["sealed_small"] = envelope.seal(small, ctx)
        names["sealed_big"] = envelope.seal_blob(big, ctx)
        assert envelope.open(names["sealed_small"], ctx) == small
        assert envelope.open_blob(names["sealed_big"], ctx) == big

        n_small, n_big, rep = 20_000, 100, args.repeat
        cases = {
            "seal 1 KiB (seal)": ("enc(nonce, small, None)", "seal(small, ctx)", n_small),
            "open 1 KiB (open)": ("dec(nonce, small_ct, None)", "open_(sealed_small, ctx)",
                                  n_small),
            "seal 1 MiB (seal_blob)": ("enc(nonce, big, None)", "seal_blob(big, ctx)", n_big),
            "open 1 MiB (open_blob)": ("dec(nonce, big_ct, None)", "open_blob(sealed_big, ctx)",
                                       n_big),
            "seal 1 MiB (seal_stream, 16 segments)": (
                "enc(nonce, big, None)", "drain(seal_stream((big,), ctx))", n_big),
            "open 1 MiB (open_stream, 16 segments)": (
                "dec(nonce, big_ct, None)", "drain(open_stream((sealed_big,), ctx))", n_big),
        }
        rows = {name: measure(raw_stmt, env_stmt, names, number, rep)
                for name, (raw_stmt, env_stmt, number) in cases.items()}
        # For scale only: the raw call plus the syscall a caller would need for its nonce.
        with_nonce = measure("enc(urandom(12), small, None)", "seal(small, ctx)", names,
                             n_small, rep)
        urandom_us = statistics.median(
            per_call("urandom(12)", names, n_small) for _ in range(rep)) * 1e6
        keys.close()

    machine = {
        "python": sys.version.split()[0],
        "cryptography": cryptography.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "repeat": rep,
    }
    if args.json:
        print(json.dumps({"machine": machine, "urandom12_us": urandom_us, "results": rows,
                          "seal_1kib_vs_raw_plus_urandom": with_nonce}))
        return 0
    print(f"machine: {machine}")
    print(f"os.urandom(12) alone: {urandom_us:.3f} us; raw 1 KiB encrypt + os.urandom(12): "
          f"{with_nonce['raw_us']:.3f} us, seal = {with_nonce['ratio']:.2f} of that\n")
    print("| case | raw AESGCM call (us) | envelope (us) | throughput ratio | target | met |")
    print("|---|---:|---:|---:|---:|:---:|")
    for name, r in rows.items():
        target = TARGETS[KIB if "KiB" in name else MIB]
        met = "yes" if r["ratio"] >= target else "NO"
        print(f"| {name} | {r['raw_us']:.3f} | {r['envelope_us']:.3f} | {r['ratio']:.2f} "
              f"| {target:.2f} | {met} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
