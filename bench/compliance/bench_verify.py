"""Residency verification benchmark: `verify_site` over a SQLite store of 100,000 records and
1 GiB of blobs.

    .venv/bin/python bench/compliance/bench_verify.py [--records 100000] [--blob-mib 1024]
        [--blob-mib-each 4] [--no-write] [--json]

Builds a fresh site with `init_site` in a temp folder: 100 tenants (50 eu workspaces, 50 eu
projects, made through the directory so their creation is audited), and in the eu store
`--records` rows sealed with `RegionalStore.seal` exactly as the services seal them (half
workspace messages of ~512 bytes in conversations, half stored responses), inserted in
batches of 5,000 in one transaction each; then `--blob-mib` of blobs written through
`RegionalStore.put_blob` (`--blob-mib-each` MiB each). Then times `verify_site(site, ["eu"])`
(every row opened, every blob streamed and opened, the audit chain walked) twice, a warm run
after a cold one; reports records/s and MB/s of blobs. Targets: 50,000 records/s and
200 MB/s. Writes the "bench-verify" section of bench/RESULTS.md (bench/sections.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # bench.sections

from bench.sections import write_section  # noqa: E402
from sqlalchemy import insert  # noqa: E402

from domicile.compliance.verification import verify_site  # noqa: E402
from domicile.site import Site, init_site  # noqa: E402
from domicile.storage.interfaces import TenantRef  # noqa: E402
from domicile.storage.models import RecordRow  # noqa: E402
from domicile.workspace.models import ConversationRow, MessageRow  # noqa: E402

BATCH = 5000
TENANTS = 50  # of each kind


def seed(site: Site, records: int, blob_mib: int, blob_mib_each: int) -> None:
    store = site.store("eu")
    directory = site.directory
    org = directory.create_org("Bench").id
    workspaces = [TenantRef(directory.create_workspace(org, f"ws{i}", "eu").id, "eu", org)
                  for i in range(TENANTS)]
    projects = [TenantRef(directory.create_project(org, f"p{i}", "eu",
                                                   retention="regional").id, "eu", org)
                for i in range(TENANTS)]
    now = datetime.now(UTC)
    body = os.urandom(256).hex().encode()  # 512 bytes
    conversations = []
    for n, tenant in enumerate(workspaces):
        conversation = f"conv_{n:06d}"
        conversations.append(conversation)
        title = store.seal(tenant, "ws-conversation-title", conversation, b"a title")
        with store.engine.begin() as conn:
            conn.execute(insert(ConversationRow).values(
                id=conversation, workspace_id=tenant.id, user_id="user_bench", region="eu",
                model="dev-echo", gpt_id=None, current_message_id=None, message_count=0,
                created_at=now, updated_at=now, title=title))
    messages = records // 2 - len(workspaces)
    done = 0
    while done < messages:
        rows = []
        for i in range(done, min(done + BATCH, messages)):
            tenant = workspaces[i % TENANTS]
            message_id = f"msg_{i:09d}"
            rows.append({
                "id": message_id, "conversation_id": conversations[i % TENANTS],
                "workspace_id": tenant.id, "user_id": "user_bench", "region": "eu",
                "parent_id": None, "seq": i, "role": "user", "status": "complete",
                "created_at": now, "body": store.seal(tenant, "ws-message", message_id, body)})
        with store.engine.begin() as conn:
            conn.execute(insert(MessageRow), rows)
        done += len(rows)
    responses = records - records // 2
    done = 0
    while done < responses:
        rows = []
        for i in range(done, min(done + BATCH, responses)):
            tenant = projects[i % TENANTS]
            record_id = f"resp_{i:09d}"
            rows.append({
                "tenant_id": tenant.id, "kind": "response", "record_id": record_id,
                "region": "eu", "created_at": now, "updated_at": now,
                "body": store.seal(tenant, "response", record_id, body)})
        with store.engine.begin() as conn:
            conn.execute(insert(RecordRow), rows)
        done += len(rows)
    chunk = os.urandom(1 << 20)
    for i in range(blob_mib // blob_mib_each):
        store.put_blob(projects[i % TENANTS], "file", f"file_{i:06d}", "data.bin",
                       (chunk for _ in range(blob_mib_each)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--blob-mib", type=int, default=1024)
    parser.add_argument("--blob-mib-each", type=int, default=4)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as temp:
        site = Site(init_site(Path(temp) / "site"))
        started = time.perf_counter()
        seed(site, args.records, args.blob_mib, args.blob_mib_each)
        seeded = time.perf_counter() - started
        runs = []
        for _ in range(2):
            site.close()
            site = Site(site.settings)  # fresh engines and envelope: no cached keys
            result = verify_site(site, ["eu"])
            if not result.ok:
                raise SystemExit(f"the bench site does not verify: {result.violations[:3]}")
            runs.append(result)
        site.close()
        summary = {
        "records": runs[0].records, "blobs": runs[0].blobs, "blob_bytes": runs[0].blob_bytes,
        "seed_seconds": round(seeded, 1),
        "runs": [r.to_json() | {"violations": len(r.violations)} for r in runs],
        "python": platform.python_version(), "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(summary))
    lines = [
        "## Residency verification (`bench/compliance/bench_verify.py`)",
        "",
        f"`residency verify` of one SQLite store: {summary['records']:,} records (rows of "
        f"every kind opened) and {summary['blobs']:,} blobs of {args.blob_mib_each} MiB "
        f"({summary['blob_bytes'] / 2**30:.2f} GiB, streamed and opened), audit chain "
        f"walked. Python {summary['python']}, {summary['cpus']} CPUs (shared). Seeding took "
        f"{seeded:.0f} s.",
        "",
        "| run | seconds | of which blobs | records/s | MB/s of blobs |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, run in zip(("cold", "warm"), runs, strict=True):
        lines.append(f"| {name} | {run.seconds:.2f} | {run.blob_seconds:.2f} | "
                     f"{run.records_per_second:,.0f} | {run.megabytes_per_second:,.0f} |")
    lines += ["", "records/s: records over the time not spent in blob files (which includes "
              "reading the directory, the schema check and the audit chain's walk); MB/s: blob "
              "bytes (10^6) over the time spent reading and opening blob files. Targets: "
              "50,000 records/s, 200 MB/s. Cold: a fresh process's first run (keys unwrapped, "
              "files from the page cache as the seeding left them).", ""]
    if not args.no_write:
        write_section("bench-verify", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
