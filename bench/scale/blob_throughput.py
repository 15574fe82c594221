"""Blob upload and download throughput through Domicile's blob stores, as ratios to the raw
calls on the same backend (issue 10: target at least 80%).

    .venv/bin/python bench/scale/blob_throughput.py [--size-mib 50] [--repeat 3]

- S3: `S3BlobStore.put` (64 KiB chunks, as sealed segments come) and `get` (its 64 KiB
  chunks consumed) against raw boto3 `upload_fileobj` (boto3's managed transfer: 8 MiB parts,
  up to 10 threads) and `get_object()["Body"].read()`, on one moto server started here (an
  emulator on loopback: its numbers say what our layer costs over boto3's, not what S3 does).
- File: `FileBlobStore.put`/`get` against a raw `open/write/fsync` and 64 KiB `read`s of
  the same bytes in the same folder (the store fsyncs too, and renames).

Each measure is the median of `--repeat` runs, contenders interleaved. Prints MiB/s and the
ratios; nothing is written. Stops the moto server it started, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "src"))

from domicile.storage.blobs import FileBlobStore  # noqa: E402
from domicile.storage.s3 import S3BlobStore  # noqa: E402

REGION = "eu-central-1"
CHUNK = 1 << 16
TARGET = 0.8


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_moto(log_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    executable = shutil.which("moto_server", path=os.path.dirname(sys.executable))
    if executable is None:
        sys.exit("moto_server not found: pip install 'moto[server]'")
    port = free_port()
    with open(log_dir / "moto.log", "wb") as log:
        process = subprocess.Popen([executable, "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"moto_server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(endpoint + "/moto-api/", timeout=5):
                return process, endpoint
        except (OSError, urllib.error.URLError):
            time.sleep(0.1)
    process.kill()
    sys.exit("moto_server did not answer within 60 s")


def chunks(data: bytes) -> Iterator[bytes]:
    view = memoryview(data)
    for at in range(0, len(data), CHUNK):
        yield bytes(view[at:at + CHUNK])


def drain(stream: Iterator[bytes]) -> int:
    return sum(len(chunk) for chunk in stream)


def timed(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def measure(pairs: dict[str, Callable[[], Any]], repeat: int) -> dict[str, float]:
    """Median seconds of each contender, run in turn `repeat` times."""
    seconds: dict[str, list[float]] = {name: [] for name in pairs}
    for _ in range(repeat):
        for name, run in pairs.items():
            seconds[name].append(timed(run))
    return {name: statistics.median(values) for name, values in seconds.items()}


def s3_numbers(endpoint: str, data: bytes, repeat: int) -> dict[str, float]:
    import boto3

    client: Any = boto3.client("s3", endpoint_url=endpoint, region_name=REGION,
                               aws_access_key_id="bench", aws_secret_access_key="bench")
    client.create_bucket(Bucket="domicile-bench",
                         CreateBucketConfiguration={"LocationConstraint": REGION})
    store = S3BlobStore("domicile-bench", "blobs", client=client)
    uploads = measure({
        "store": lambda: store.put("t/file/ours", chunks(data)),
        "raw": lambda: client.upload_fileobj(io.BytesIO(data), "domicile-bench", "raw"),
    }, repeat)
    downloads = measure({
        "store": lambda: drain(store.get("t/file/ours")),
        "raw": lambda: client.get_object(Bucket="domicile-bench", Key="raw")["Body"].read(),
    }, repeat)
    assert b"".join(store.get("t/file/ours")) == data
    return {"upload_store": uploads["store"], "upload_raw": uploads["raw"],
            "download_store": downloads["store"], "download_raw": downloads["raw"]}


def file_numbers(folder: Path, data: bytes, repeat: int) -> dict[str, float]:
    store = FileBlobStore(folder / "blobs")
    raw = folder / "raw"

    def write_raw() -> None:
        with open(raw, "wb") as handle:
            for chunk in chunks(data):
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())

    def read_raw() -> int:
        read = 0
        with open(raw, "rb") as handle:
            while chunk := handle.read(CHUNK):
                read += len(chunk)
        return read

    uploads = measure({"store": lambda: store.put("t/file/ours", chunks(data)),
                       "raw": write_raw}, repeat)
    downloads = measure({"store": lambda: drain(store.get("t/file/ours")),
                         "raw": read_raw}, repeat)
    return {"upload_store": uploads["store"], "upload_raw": uploads["raw"],
            "download_store": downloads["store"], "download_raw": downloads["raw"]}


def report(name: str, numbers: dict[str, float], size: int) -> None:
    mib = size / (1 << 20)
    for direction in ("upload", "download"):
        ours, raw = numbers[f"{direction}_store"], numbers[f"{direction}_raw"]
        ratio = raw / ours  # throughput ratio: store MiB/s over raw MiB/s
        verdict = "ok" if ratio >= TARGET else "below target"
        print(f"{name:5} {direction:8}  store {mib / ours:8.1f} MiB/s   raw {mib / raw:8.1f} "
              f"MiB/s   ratio {ratio:5.2f}  ({verdict}, target >= {TARGET:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=["file", "s3"])
    args = parser.parse_args()
    data = os.urandom(args.size_mib << 20)
    with tempfile.TemporaryDirectory(prefix="blob-bench-") as temp:
        folder = Path(temp)
        print(f"{args.size_mib} MiB blob, median of {args.repeat}, "
              f"{os.cpu_count()} cores, {CHUNK // 1024} KiB chunks")
        if args.only in (None, "file"):
            report("file", file_numbers(folder, data, args.repeat), len(data))
        if args.only in (None, "s3"):
            process, endpoint = start_moto(folder)
            try:
                report("s3", s3_numbers(endpoint, data, args.repeat), len(data))
            finally:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


if __name__ == "__main__":
    main()
