#!/usr/bin/env python3
"""Load a leakbloom router or node with h2load (nghttp2's C load generator), as a second client
beside `leakbloom bench e2e`: on a 2-core machine the tonic bench client spends about as much
CPU per call as the router, so h2load shows what the server side alone sustains.

usage: benches/scripts/h2load.py [--addr 127.0.0.1:50051] [--set bench] [--batch 1]
           [--consistency any|linearizable] [--conns 4] [--streams 16] [--requests 200000]

Prints one line like `leakbloom bench e2e`:
  client=h2load mode=check batch=B conns=C streams=S consistency=K keys_per_s=X p50_ms=..
  p99_ms=.. p999_ms=.. errors=E

Caveats: every request carries the same keys (random, generated once), so the node's filter
reads stay in cache; h2load counts HTTP errors only, so a gRPC status other than OK in the
trailers is not seen: the script sends one request with curl first and stops unless its
grpc-status is 0. Needs h2load (Debian: nghttp2-client) and curl; loopback addresses only.
"""
import argparse
import os
import struct
import subprocess
import sys
import tempfile


def varint(value):
    out = b""
    while True:
        byte, value = value & 0x7F, value >> 7
        if value:
            out += bytes([byte | 0x80])
        else:
            return out + bytes([byte])


def check_request(set_name, batch, consistency):
    """A gRPC-framed leakbloom.v1.CheckRequest{sets: [set], keys, consistency}."""
    name = set_name.encode()
    keys = os.urandom(32 * batch)
    message = (b"\x0a" + varint(len(name)) + name + b"\x12" + varint(len(keys)) + keys
               + b"\x18" + bytes([consistency]))
    return b"\x00" + struct.pack(">I", len(message)) + message


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="127.0.0.1:50051")
    parser.add_argument("--set", default="bench")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--consistency", choices=["any", "linearizable"], default="any")
    parser.add_argument("--conns", type=int, default=4)
    parser.add_argument("--streams", type=int, default=16, help="concurrent streams per conn")
    parser.add_argument("--requests", type=int, default=200_000)
    args = parser.parse_args()
    host = args.addr.rsplit(":", 1)[0]
    if not (host.startswith("127.") or host in ("localhost", "[::1]")):
        sys.exit(f"refusing {args.addr}: this generates heavy load; loopback addresses only")
    url = f"http://{args.addr}/leakbloom.v1.Lookup/Check"
    headers = ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    with tempfile.TemporaryDirectory() as tmp:
        body = os.path.join(tmp, "request.bin")
        with open(body, "wb") as out:
            out.write(check_request(args.set, args.batch, 2 if args.consistency == "any" else 1))
        probe = subprocess.run(
            ["curl", "-s", "--http2-prior-knowledge", *headers, "--data-binary", f"@{body}",
             "-D", "-", "-o", "/dev/null", url], capture_output=True, text=True, check=False)
        if "grpc-status: 0" not in probe.stdout:
            sys.exit(f"a probe request did not succeed:\n{probe.stdout}{probe.stderr}")
        log = os.path.join(tmp, "h2load.log")
        run = subprocess.run(
            ["h2load", "-n", str(args.requests), "-c", str(args.conns), "-m", str(args.streams),
             "-t", "1", "-d", body, *headers, f"--log-file={log}", url],
            capture_output=True, text=True, check=False)
        if run.returncode != 0:
            sys.exit(run.stdout + run.stderr)
        seconds = None
        errors = 0
        for line in run.stdout.splitlines():
            if line.startswith("finished in "):
                seconds = float(line.split()[2].rstrip("s,"))
            if line.startswith("requests:"):
                fields = line.replace(",", "").split()
                errors = int(fields[fields.index("failed") - 1]) + int(
                    fields[fields.index("errored") - 1])
        with open(log) as lines:
            latency = sorted(int(line.split()[2]) for line in lines)
    n = len(latency)
    pct = lambda q: latency[min(n - 1, int(n * q))] / 1000
    print(f"client=h2load mode=check batch={args.batch} conns={args.conns} streams={args.streams} "
          f"consistency={args.consistency} keys_per_s={n * args.batch / seconds:.0f} "
          f"p50_ms={pct(0.5):.3f} p99_ms={pct(0.99):.3f} p999_ms={pct(0.999):.3f} errors={errors}")


if __name__ == "__main__":
    main()
