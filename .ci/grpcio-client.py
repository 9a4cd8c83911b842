"""A Python grpcio client of leakbloom, as a user in another language would write one: stubs
generated from proto/ with grpcio-tools, then ListSets, Check (one key present, one absent),
Insert of a new key and a linearizable Check that finds it, and an INVALID_ARGUMENT status.

usage: python3 .ci/grpcio-client.py ADDR KEYHEX   (KEYHEX: a key of the demo set)
"""
import hashlib
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "proto")


def stubs(out):
    import grpc_tools

    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    code = protoc.main([
        "protoc", f"-I{ROOT}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}",
        "leakbloom/v1/lookup.proto",
    ])
    if code != 0:
        sys.exit(f"protoc failed with {code}")
    sys.path.insert(0, out)
    from leakbloom.v1 import lookup_pb2, lookup_pb2_grpc

    return lookup_pb2, lookup_pb2_grpc


def bit(present, i):
    return present[i // 8] >> (i % 8) & 1


def main():
    addr, key_hex = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as out:
        pb, rpc = stubs(out)
        with grpc.insecure_channel(addr) as channel:
            lookup = rpc.LookupStub(channel)
            names = [s.name for s in lookup.ListSets(pb.ListSetsRequest(), timeout=10).sets]
            assert "demo" in names, names
            present_key = bytes.fromhex(key_hex)
            absent_key = hashlib.sha256(b"nobody-at-all@example.com").digest()
            reply = lookup.Check(pb.CheckRequest(
                sets=["demo"], keys=present_key + absent_key,
                consistency=pb.CONSISTENCY_ANY_REPLICA), timeout=10)
            assert reply.results[0].set == "demo"
            assert bit(reply.results[0].present, 0) == 1, "the demo key is missing"
            new_key = hashlib.sha256(b"grpcio-client@example.com").digest()
            lookup.CreateSet(pb.CreateSetRequest(name="python", capacity=1000, fpr=1e-6),
                             timeout=10)
            assert lookup.Insert(pb.InsertRequest(set="python", keys=new_key), timeout=10).keys == 1
            reply = lookup.Check(pb.CheckRequest(sets=["python"], keys=new_key), timeout=10)
            assert bit(reply.results[0].present, 0) == 1, "an acknowledged insert is missing"
            try:
                lookup.Check(pb.CheckRequest(sets=["demo"], keys=b"abc"), timeout=10)
                sys.exit("a 3-byte key was accepted")
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
                assert "multiple of 32" in error.details(), error.details()
    print("grpcio client: ok")


if __name__ == "__main__":
    main()
