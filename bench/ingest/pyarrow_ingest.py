"""The peer: pyarrow reads the same JSONL and writes Parquet (read_json + write_table).
Prints seconds, CPU seconds (user + system, all threads) and peak RSS in MB as JSON."""

import json
import os
import resource
import sys
import time

import pyarrow as pa
import pyarrow.json as pj
import pyarrow.parquet as pq

src, dst = sys.argv[1], sys.argv[2]
schema = pa.schema([
    ("text", pa.string()), ("topic", pa.string()), ("difficulty", pa.int64()),
    ("verified", pa.bool_()), ("written_at", pa.timestamp("us", tz="UTC")),
    ("keywords", pa.list_(pa.string())),
])
start = time.perf_counter()
cpu_start = sum(os.times()[:2])
table = pj.read_json(src, parse_options=pj.ParseOptions(explicit_schema=schema))
pq.write_table(table, dst, compression="snappy")
seconds = time.perf_counter() - start
cpu = sum(os.times()[:2]) - cpu_start
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "cpu": cpu, "rows": table.num_rows, "peak_mb": peak_mb,
                  "threads": pa.cpu_count()}))
