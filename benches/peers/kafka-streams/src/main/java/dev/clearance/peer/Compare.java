package dev.clearance.peer;

import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.TreeSet;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

/**
 * Per-request agreement of two decision topics (JSON records with
 * request_id, outcome and reasons), e.g. clearance's and the peer's.
 *
 * <p>usage: Compare --bootstrap B --a TOPIC --b TOPIC --count N [--timeout-secs S]
 *
 * <p>Reads each topic from the beginning until it holds N records (or the
 * timeout), keeps the last decision per request_id, and prints one JSON
 * line: compared (request ids in either), agree / disagree on the outcome,
 * reasons_agree (same reasons, in the same order), missing_a / missing_b,
 * duplicates_a / duplicates_b, up to 10 examples of disagreement, and
 * a_by_reasons: how many of A's decisions had each outcome and reason list
 * (what the comparison covered).
 * Exit code 0 when every outcome agrees and nothing is missing.
 */
public final class Compare {
    private Compare() {}

    public static void main(String[] args) throws Exception {
        String bootstrap = null, a = null, b = null;
        long count = -1;
        long timeout = 300;
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--bootstrap" -> bootstrap = args[++i];
                case "--a" -> a = args[++i];
                case "--b" -> b = args[++i];
                case "--count" -> count = Long.parseLong(args[++i]);
                case "--timeout-secs" -> timeout = Long.parseLong(args[++i]);
                default -> throw new IllegalArgumentException("unknown argument " + args[i]);
            }
        }
        if (bootstrap == null || a == null || b == null || count < 0) {
            throw new IllegalArgumentException("--bootstrap, --a, --b and --count are required");
        }
        long deadline = System.nanoTime() + timeout * 1_000_000_000L;
        long[] dupA = new long[1];
        long[] dupB = new long[1];
        Map<String, String[]> da = read(bootstrap, a, count, deadline, dupA);
        Map<String, String[]> db = read(bootstrap, b, count, deadline, dupB);
        TreeSet<String> ids = new TreeSet<>(da.keySet());
        ids.addAll(db.keySet());
        long agree = 0, disagree = 0, reasonsAgree = 0, missingA = 0, missingB = 0;
        List<String> examples = new ArrayList<>();
        java.util.TreeMap<String, Long> byReasons = new java.util.TreeMap<>();
        for (String id : ids) {
            String[] x = da.get(id);
            String[] y = db.get(id);
            if (x == null) {
                missingA++;
            } else if (y == null) {
                missingB++;
            }
            if (x != null) {
                byReasons.merge(x[0] + ":" + x[1], 1L, Long::sum);
            }
            if (x != null && y != null && x[0].equals(y[0])) {
                agree++;
                if (x[1].equals(y[1])) {
                    reasonsAgree++;
                }
                continue;
            }
            disagree++;
            if (examples.size() < 10) {
                StringBuilder e = new StringBuilder("{\"request_id\":");
                Codec.quote(e, id);
                e.append(",\"a\":");
                Codec.quote(e, x == null ? "(missing)" : x[0] + " [" + x[1] + "]");
                e.append(",\"b\":");
                Codec.quote(e, y == null ? "(missing)" : y[0] + " [" + y[1] + "]");
                examples.add(e.append('}').toString());
            }
        }
        System.out.println("{\"compared\":" + ids.size() + ",\"agree\":" + agree + ",\"disagree\":" + disagree
                + ",\"reasons_agree\":" + reasonsAgree + ",\"missing_a\":" + missingA + ",\"missing_b\":" + missingB
                + ",\"duplicates_a\":" + dupA[0] + ",\"duplicates_b\":" + dupB[0]
                + ",\"examples\":[" + String.join(",", examples) + "],\"a_by_reasons\":{"
                + byReasons.entrySet().stream().map(e -> {
                    StringBuilder k = new StringBuilder();
                    Codec.quote(k, e.getKey());
                    return k + ":" + e.getValue();
                }).collect(java.util.stream.Collectors.joining(",")) + "}}");
        System.exit(disagree == 0 && ids.size() > 0 ? 0 : 1);
    }

    /** request_id to {outcome, reasons joined by ","}. */
    static Map<String, String[]> read(String bootstrap, String topic, long count, long deadline, long[] dups) {
        Properties p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
        p.put(ConsumerConfig.MAX_POLL_RECORDS_CONFIG, 5000);
        Map<String, String[]> out = new HashMap<>();
        try (KafkaConsumer<byte[], byte[]> c =
                new KafkaConsumer<>(p, new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
            List<TopicPartition> tps = new ArrayList<>();
            for (PartitionInfo pi : c.partitionsFor(topic, Duration.ofSeconds(30))) {
                tps.add(new TopicPartition(topic, pi.partition()));
            }
            c.assign(tps);
            c.seekToBeginning(tps);
            long n = 0;
            while (n < count && System.nanoTime() < deadline) {
                for (ConsumerRecord<byte[], byte[]> r : c.poll(Duration.ofMillis(500))) {
                    n++;
                    String[] d = Codec.readDecision(r.value());
                    if (d == null || d[0] == null) {
                        continue;
                    }
                    if (out.put(d[0], new String[] {String.valueOf(d[1]), d[2]}) != null) {
                        dups[0]++;
                    }
                }
            }
            if (n < count) {
                System.err.println(topic + ": only " + n + " of " + count + " records before the timeout");
            }
        }
        return out;
    }
}
