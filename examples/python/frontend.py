#!/usr/bin/env python3
"""A frontend of clearance in Python: request/reply over Kafka.

Each access request goes to the requests topic (key: subject id) with
Spring's ReplyingKafkaTemplate headers:

    kafka_replyTopic      the reply topic (UTF-8)
    kafka_replyPartition  our reply partition, 4 bytes big-endian
    kafka_correlationId   16 random bytes, copied onto the reply

The engine sends the decision back there. A request with no decision
within --timeout-ms is denied here (fail closed, reason "timeout").

    frontend.py ... < requests.jsonl          print one decision per request
    frontend.py ... --check scenarios.jsonl   {"request": {...}, "expected_outcome": "allow"|"deny"}
                                              per line; exit 1 on a mismatch or timeout
"""

import argparse
import datetime
import json
import struct
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition


class Frontend:
    def __init__(self, bootstrap, requests_topic, reply_topic, reply_partition):
        self.requests_topic = requests_topic
        self.reply_topic = reply_topic
        self.reply_partition = reply_partition
        self.producer = Producer(
            {"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": "all", "enable.idempotence": True}
        )
        # No consumer group: our reply partition is assigned by hand, from
        # its end as it is now, so no reply to a request sent later is missed.
        self.consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": "frontend-unused", "enable.auto.commit": False}
        )
        tp = TopicPartition(reply_topic, reply_partition)
        _, high = self.consumer.get_watermark_offsets(tp, timeout=10)
        self.consumer.assign([TopicPartition(reply_topic, reply_partition, high)])
        self.failed = {}

    def send(self, request):
        """Send one request; returns its correlation id."""
        corr = uuid.uuid4().bytes

        def delivered(err, _msg):
            if err is not None:
                self.failed[corr] = err

        self.producer.produce(
            self.requests_topic,
            key=request["subject_id"].encode(),
            value=json.dumps(request).encode(),
            headers=[
                ("kafka_replyTopic", self.reply_topic.encode()),
                ("kafka_replyPartition", struct.pack(">i", self.reply_partition)),
                ("kafka_correlationId", corr),
            ],
            on_delivery=delivered,
        )
        self.producer.poll(0)
        return corr

    def decide_all(self, requests, timeout_s):
        """Send every request, wait for their decisions until the timeout;
        those without one are denied for timeout."""
        waiting = {self.send(r): r for r in requests}
        decisions = {}
        deadline = time.monotonic() + timeout_s
        while waiting and time.monotonic() < deadline:
            self.producer.poll(0)
            msg = self.consumer.poll(min(0.1, max(0.0, deadline - time.monotonic())))
            if msg is None or msg.error():
                continue
            corr = dict(msg.headers() or []).get("kafka_correlationId")
            request = waiting.pop(corr, None)
            if request is not None:  # else: late, or not ours
                decisions[corr] = json.loads(msg.value())
        self.producer.flush(5)
        if self.failed:
            raise KafkaException(next(iter(self.failed.values())))
        for corr, request in waiting.items():
            decisions[corr] = timeout_decision(request)
        return list(decisions.values())

    def close(self):
        self.consumer.close()


def timeout_decision(request):
    """Fail closed: the deny of a request whose decision did not come back."""
    return {
        "request_id": request["request_id"],
        "outcome": "deny",
        "reasons": ["timeout"],
        "rule_ids": ["client:timeout"],
        "legal_basis": [],
        "obligations": [],
        "versions": {"policy_id": "", "policy_version": "", "data_version": "", "subject": None, "organization": None},
        "inputs": {"request": request, "subject": None, "organization": None},
        "decided_at": datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z"),
        "engine_instance": "client",
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--requests-topic", default="access.requests")
    ap.add_argument("--reply-topic", default="access.replies")
    ap.add_argument("--reply-partition", type=int, default=0)
    ap.add_argument("--timeout-ms", type=int, default=2000)
    ap.add_argument("--check", metavar="SCENARIOS", help="JSON lines of {request, expected_outcome}")
    args = ap.parse_args()

    if args.check:
        with open(args.check) as f:
            scenarios = [json.loads(line) for line in f if line.strip()]
    else:
        scenarios = [{"request": json.loads(line)} for line in sys.stdin if line.strip()]
    requests = [s["request"] for s in scenarios]
    expected = {s["request"]["request_id"]: s.get("expected_outcome") for s in scenarios}

    fe = Frontend(args.bootstrap, args.requests_topic, args.reply_topic, args.reply_partition)
    try:
        decisions = fe.decide_all(requests, args.timeout_ms / 1000)
    finally:
        fe.close()

    bad = 0
    for d in sorted(decisions, key=lambda d: d["request_id"]):
        if not args.check:
            print(json.dumps(d))
            continue
        want = expected.get(d["request_id"])
        ok = d["outcome"] == want and d["reasons"] != ["timeout"]
        bad += not ok
        print(f"{'ok ' if ok else 'BAD'} {d['request_id']} {d['outcome']} {','.join(d['reasons'])}"
              + ("" if ok else f" (expected {want})"))
    if args.check:
        print(f"checked {len(decisions)} requests: {len(decisions) - bad} as expected, {bad} not")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
