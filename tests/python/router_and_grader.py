"""A router and a grader that know untaken only through proto/ and README.md.

The router calls Mirror (one-phase with the answer, two-phase with Complete);
the grader reads the topic with a plain Kafka client and json.loads, the way a
grading pipeline would. Exits non-zero with a message on any mismatch.
"""
import json
import sys
import time

import grpc
from kafka import KafkaConsumer

from untaken.v1 import mirror_pb2, mirror_pb2_grpc

grpc_addr, bootstrap, topic = sys.argv[1:4]

request = {"model": "fast-model", "messages": [{"role": "user", "content": "Plan a 3-leg trip, then price it."}]}
answer = {"choices": [{"message": {"role": "assistant", "content": "python router's fast answer"}}],
          "usage": {"prompt_tokens": 20, "completion_tokens": 5}}

stub = mirror_pb2_grpc.MirrorStub(grpc.insecure_channel(grpc_addr))
primary = mirror_pb2.Answer(body=json.dumps(answer).encode(), status_code=200, latency_ms=31.5)
one = stub.Mirror(mirror_pb2.MirrorRequest(
    request_id="py-one", route_taken="fast", request_body=json.dumps(request).encode(),
    slice="multi_step", labels={"tenant": "py"}, primary=primary))
two = stub.Mirror(mirror_pb2.MirrorRequest(
    request_id="py-two", route_taken="fast", request_body=json.dumps(request).encode(), slice="multi_step"))
assert one.sampled and two.sampled, (one, two)
done = stub.Complete(mirror_pb2.CompleteRequest(request_id="py-two", primary=primary))
assert done.pair_id == two.pair_id, (done, two)
try:
    stub.Mirror(mirror_pb2.MirrorRequest(request_id="", route_taken="fast", request_body=b"{}"))
    sys.exit("an empty request_id was accepted")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.code()

consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                         enable_auto_commit=False, group_id=None, consumer_timeout_ms=30000)
records = {}
deadline = time.time() + 60
for msg in consumer:
    r = json.loads(msg.value)
    records[r["request_id"]] = (r, dict(msg.headers), msg.key)
    if len(records) == 2 or time.time() > deadline:
        break
assert set(records) == {"py-one", "py-two"}, sorted(records)
for rid, pair_id in (("py-one", one.pair_id), ("py-two", two.pair_id)):
    r, headers, key = records[rid]
    assert key == rid.encode(), key
    assert headers["content-type"] == b"application/json", headers
    assert r["pair_id"] == pair_id
    assert r["status"] == "PAIR_STATUS_COMPLETE", r["status"]
    assert r["primary"]["body"]["choices"][0]["message"]["content"] == "python router's fast answer"
    shadow = r["counterfactual"]["body"]["choices"][0]["message"]["content"]
    assert "reasoning-model" in shadow, shadow
    assert r["request"]["messages"][0]["content"].startswith("Plan a 3-leg trip")
    assert r["sampling_weight"] == 1 / r["sampling_rate"]
    assert r["route_not_taken"] == {"name": "reasoning", "model": "reasoning-model"}
print("python router + grader: 2 pairs read and checked")
