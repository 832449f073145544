// A frontend of clearance in TypeScript: request/reply over Kafka (kafkajs).
//
// Each access request goes to the requests topic (key: subject id) with
// Spring's ReplyingKafkaTemplate headers:
//
//   kafka_replyTopic      the reply topic (UTF-8)
//   kafka_replyPartition  our reply partition, 4 bytes big-endian
//   kafka_correlationId   16 random bytes, copied onto the reply
//
// The engine sends the decision back there. A request with no decision
// within --timeout-ms is denied here (fail closed, reason "timeout").
//
//   node dist/frontend.js ... < requests.jsonl         one decision per request
//   node dist/frontend.js ... --check scenarios.jsonl  {"request": {...}, "expected_outcome": "allow"|"deny"}
//                                                      per line; exit 1 on a mismatch or timeout

import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { CompressionCodecs, CompressionTypes, Kafka, logLevel, Partitioners } from "kafkajs";
import * as lz4 from "lz4js";

// The engine's producer compresses with lz4, which kafkajs only reads
// through a codec: lz4js (pure JavaScript, LZ4 frames as Kafka writes them).
CompressionCodecs[CompressionTypes.LZ4] = () => ({
  compress: async (encoder: { buffer: Buffer }) => Buffer.from(lz4.compress(encoder.buffer)),
  decompress: async (buffer: Buffer) => Buffer.from(lz4.decompress(buffer)),
});

type AccessRequest = { request_id: string; subject_id: string; [field: string]: unknown };
type Decision = { request_id: string; outcome: "allow" | "deny"; reasons: string[]; [field: string]: unknown };

/** Fail closed: the deny of a request whose decision did not come back. */
function timeoutDecision(request: AccessRequest): Decision {
  return {
    request_id: request.request_id,
    outcome: "deny",
    reasons: ["timeout"],
    rule_ids: ["client:timeout"],
    legal_basis: [],
    obligations: [],
    versions: { policy_id: "", policy_version: "", data_version: "", subject: null, organization: null },
    inputs: { request, subject: null, organization: null },
    decided_at: new Date().toISOString(),
    engine_instance: "client",
  };
}

async function main(): Promise<number> {
  const { values: opts } = parseArgs({
    options: {
      bootstrap: { type: "string", default: "127.0.0.1:9092" },
      "requests-topic": { type: "string", default: "access.requests" },
      "reply-topic": { type: "string", default: "access.replies" },
      "reply-partition": { type: "string", default: "0" },
      "timeout-ms": { type: "string", default: "2000" },
      check: { type: "string" },
    },
  });
  const replyTopic = opts["reply-topic"]!;
  const replyPartition = Number(opts["reply-partition"]);
  const lines = readFileSync(opts.check ?? 0, "utf8").split("\n").filter((l) => l.trim());
  const scenarios: { request: AccessRequest; expected_outcome?: string }[] = opts.check
    ? lines.map((l) => JSON.parse(l))
    : lines.map((l) => ({ request: JSON.parse(l) }));

  const kafka = new Kafka({ brokers: opts.bootstrap!.split(","), logLevel: logLevel.WARN });
  // kafkajs has no manual assignment: a consumer group of our own, whose
  // offsets are set to the reply topic's end *before* it joins, so that no
  // reply to a request sent later is missed. Deleted on exit.
  const groupId = `clearance-frontend-${randomBytes(8).toString("hex")}`;
  const admin = kafka.admin();
  await admin.connect();
  const ends = await admin.fetchTopicOffsets(replyTopic);
  await admin.setOffsets({
    groupId,
    topic: replyTopic,
    partitions: ends.map((e) => ({ partition: e.partition, offset: e.high })),
  });
  const consumer = kafka.consumer({ groupId, maxWaitTimeInMs: 100 });
  // Partitioned by key (the subject) with Java's murmur2: one subject's
  // requests stay in order.
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner });
  const waiting = new Map<string, (d: Decision) => void>();
  await Promise.all([consumer.connect(), producer.connect()]);
  await consumer.subscribe({ topic: replyTopic });
  const joined = new Promise<void>((resolve) => consumer.on(consumer.events.GROUP_JOIN, () => resolve()));
  await consumer.run({
    eachMessage: async ({ message }) => {
      const corr = message.headers?.kafka_correlationId;
      const done = corr && waiting.get(Buffer.from(corr as Buffer).toString("hex"));
      if (done && message.value) done(JSON.parse(message.value.toString())); // else: late, or not ours
    },
  });
  await joined;

  const timeoutMs = Number(opts["timeout-ms"]);
  const partitionHeader = Buffer.alloc(4);
  partitionHeader.writeInt32BE(replyPartition);
  const decide = async (request: AccessRequest): Promise<Decision> => {
    const corr = randomBytes(16);
    const key = corr.toString("hex");
    let timer: NodeJS.Timeout | undefined;
    const reply = new Promise<Decision>((resolve) => {
      waiting.set(key, resolve);
      timer = setTimeout(() => resolve(timeoutDecision(request)), timeoutMs);
    });
    try {
      await producer.send({
        topic: opts["requests-topic"]!,
        acks: -1,
        messages: [
          {
            key: request.subject_id,
            value: JSON.stringify(request),
            headers: {
              kafka_replyTopic: replyTopic,
              kafka_replyPartition: partitionHeader,
              kafka_correlationId: corr,
            },
          },
        ],
      });
      return await reply;
    } finally {
      clearTimeout(timer);
      waiting.delete(key);
    }
  };

  let decisions: Decision[];
  try {
    decisions = await Promise.all(scenarios.map((s) => decide(s.request)));
  } finally {
    await Promise.all([consumer.disconnect(), producer.disconnect()]);
    await admin.deleteGroups([groupId]).catch(() => undefined);
    await admin.disconnect();
  }

  let bad = 0;
  decisions.forEach((d, i) => {
    if (!opts.check) return console.log(JSON.stringify(d));
    const want = scenarios[i].expected_outcome;
    const ok = d.outcome === want && d.reasons.join() !== "timeout";
    if (!ok) bad++;
    console.log(`${ok ? "ok " : "BAD"} ${d.request_id} ${d.outcome} ${d.reasons.join(",")}${ok ? "" : ` (expected ${want})`}`);
  });
  if (opts.check) console.log(`checked ${decisions.length} requests: ${decisions.length - bad} as expected, ${bad} not`);
  return bad ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(`error: ${err instanceof Error ? err.message : err}`);
    process.exit(2);
  },
);
