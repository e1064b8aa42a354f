"""Ingest benchmark: N signed JSONL records of about 200 bytes through the API (parsed,
checked, hashed, deduplicated, written to Parquet, committed), beside pyarrow reading the same
JSONL and writing Parquet, in the same run on the same machine.

    python3 bench/ingest/run.py [--records 1000000] [--runs 3]

Prints a Markdown table of medians. `--perf FILE` instead profiles one pre-signed upload on
the server with `perf record` (`perf report -i FILE` reads it). Three measurements of ours:
- end to end: `tributary contribute` (the CLI hashes and signs the file, then streams it);
- server only: the same upload with a signature computed beforehand, sent by curl;
- peak memory: the server's peak resident set (VmHWM) during the upload and the record
  index it finishes after acknowledging the batch.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.path.join(ROOT, "target", "release", "tributary")
SPEC = {
    "id": "bench-ingest", "name": "Ingest benchmark", "license": "CC0-1.0", "review": "auto",
    "schema": {"text_field": "text", "fields": [
        {"name": "text", "type": "string", "required": True},
        {"name": "topic", "type": "string"},
        {"name": "difficulty", "type": "int64"},
        {"name": "verified", "type": "bool"},
        {"name": "written_at", "type": "timestamp"},
        {"name": "keywords", "type": "list<string>"},
    ]},
}


def cpu_seconds(pid):
    """User + system CPU seconds of every thread of process `pid` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    def __init__(self, tmp):
        self.data = os.path.join(tmp, "data")
        self.proc = subprocess.Popen([BIN, "serve", "--listen", "127.0.0.1:0", "--data-dir", self.data],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.url = self.proc.stdout.readline().strip().removeprefix("listening on ")
        self.env = dict(os.environ, TRIBUTARY_URL=self.url,
                        TRIBUTARY_TOKEN_FILE=os.path.join(self.data, "admin-token"))
        spec_path = os.path.join(tmp, "spec.json")
        with open(spec_path, "w") as f:
            json.dump(SPEC, f)
        self.cli("datanets", "create", spec_path)
        self.key = os.path.join(tmp, "key")
        self.cli("keys", "new", "--key", self.key)

    def cli(self, *args):
        return subprocess.run([BIN, *args], env=self.env, check=True, capture_output=True, text=True).stdout

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def on_fresh_server(upload, n):
    """Runs `upload(server)` against a new server over an empty data directory and returns
    (seconds, server peak RSS MB, server CPU seconds)."""
    tmp = tempfile.mkdtemp(prefix="tributary-bench-")
    try:
        server = Server(tmp)
        cpu_before = cpu_seconds(server.proc.pid)
        seconds, batch = upload(server)
        assert batch["accepted"] == n, batch
        # A large batch's record index is finished after the acknowledgement; the peak counts
        # it too. Looking up a record waits for it (and finds no record of all zeros).
        missing = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                  f"{server.url}/v1/datanets/bench-ingest/records/{'0' * 64}"],
                                 check=True, capture_output=True, text=True).stdout
        assert missing == "404", missing
        peak = peak_rss_mb(server.proc.pid)
        cpu = cpu_seconds(server.proc.pid) - cpu_before
        server.stop()
        return seconds, peak, cpu
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def contribute_with_cli(data):
    def upload(server):
        start = time.perf_counter()
        batch = json.loads(server.cli("contribute", "bench-ingest", data, "--key", server.key))
        return time.perf_counter() - start, batch
    return upload


def post_presigned(data, perf=None):
    def upload(server):
        signed = json.loads(server.cli("contribute", "bench-ingest", data, "--key", server.key, "--dry-run"))
        with open(os.path.join(server.data, "admin-token")) as f:
            token = f.read().strip()
        recorder = None
        if perf:
            target = ["-a"] if os.environ.get("PERF_ALL") else ["-p", str(server.proc.pid)]
            recorder = subprocess.Popen(["perf", "record", "-F", "999", "-g", "-o", perf, *target],
                                        stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        start = time.perf_counter()
        out = subprocess.run(
            ["curl", "-sS", "-X", "POST", "-T", data, "-H", f"Authorization: Bearer {token}",
             "-H", "Content-Type: application/x-ndjson",
             "-H", f"X-Tributary-Contributor: {signed['contributor']}",
             "-H", f"X-Tributary-Signature: {signed['signature']}",
             f"{server.url}/v1/datanets/bench-ingest/contributions"],
            check=True, capture_output=True, text=True).stdout
        seconds = time.perf_counter() - start
        if recorder:
            recorder.send_signal(2)
            recorder.wait()
        return seconds, json.loads(out)
    return upload


def run_pyarrow(python, data):
    tmp = tempfile.mkdtemp(prefix="tributary-bench-")
    try:
        out = subprocess.run([python, os.path.join(ROOT, "bench", "ingest", "pyarrow_ingest.py"), data,
                              os.path.join(tmp, "out.parquet")], check=True, capture_output=True, text=True)
        result = json.loads(out.stdout)
        return result["seconds"], result["peak_mb"], result["cpu"], result["threads"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--python", default=os.path.join(ROOT, ".venv", "bin", "python"))
    parser.add_argument("--perf", metavar="FILE",
                        help="only profile one pre-signed upload with `perf record` into FILE")
    args = parser.parse_args()
    subprocess.run(["cargo", "build", "--release", "--bin", "tributary"], cwd=ROOT, check=True)
    os.makedirs(os.path.join(ROOT, "bench", "data"), exist_ok=True)
    data = os.path.join(ROOT, "bench", "data", f"ingest-{args.records}.jsonl")
    if not os.path.exists(data):
        subprocess.run([sys.executable, os.path.join(ROOT, "bench", "ingest", "gen.py"), data,
                        str(args.records)], check=True)
    size_mb = os.path.getsize(data) / 1e6
    if args.perf:
        seconds, peak, _ = on_fresh_server(post_presigned(data, args.perf), args.records)
        print(f"server {seconds:.2f}s, peak {peak:.0f} MB; profile in {args.perf}")
        return
    e2e, server, py = [], [], []
    for run in range(args.runs):
        e2e.append(on_fresh_server(contribute_with_cli(data), args.records))
        server.append(on_fresh_server(post_presigned(data), args.records))
        py.append(run_pyarrow(args.python, data))
        print(f"run {run + 1}: contribute {e2e[-1][0]:.2f}s, server {server[-1][0]:.2f}s "
              f"(peak {server[-1][1]:.0f} MB, {server[-1][2]:.2f} CPU-s), pyarrow {py[-1][0]:.2f}s "
              f"(peak {py[-1][1]:.0f} MB, {py[-1][2]:.2f} CPU-s)", file=sys.stderr)
    n = args.records
    med = lambda xs, i: statistics.median(x[i] for x in xs)
    py_rate = n / med(py, 0)
    print(f"{n:,} records, {size_mb:.0f} MB of JSONL, {args.runs} runs, medians; "
          f"pyarrow used {py[0][3]} threads; CPU-s is the server's (the CLI's own pass over the "
          f"file not counted) or pyarrow's\n")
    print("| measurement | records/s | seconds | peak RSS MB | CPU-s | ratio to pyarrow (records/s, higher is better) |")
    print("|---|---|---|---|---|---|")
    for name, xs in [("tributary contribute (sign + upload + ingest)", e2e),
                     ("tributary server ingest (pre-signed upload)", server),
                     ("pyarrow read_json + write_table", py)]:
        rate = n / med(xs, 0)
        print(f"| {name} | {rate:,.0f} | {med(xs, 0):.2f} | {med(xs, 1):.0f} | {med(xs, 2):.2f} "
              f"| {rate / py_rate:.2f} |")


if __name__ == "__main__":
    main()
