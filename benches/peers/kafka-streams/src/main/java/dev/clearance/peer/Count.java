package dev.clearance.peer;

import java.util.HashMap;
import java.util.Map;
import java.util.Properties;
import java.util.stream.Collectors;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.common.TopicPartition;

/**
 * Wait until a topic holds N records (sum of its partitions' end offsets)
 * and print {"records":N,"seconds":S,"first_seconds":F,"rate":R}: S from
 * the start of this command, F when the first record was seen, R =
 * records / (S - F) ("drain throughput" when started before the producer).
 *
 * <p>usage: Count --bootstrap B --topic T --count N [--timeout-secs S] [--interval-ms I]
 */
public final class Count {
    private Count() {}

    public static void main(String[] args) throws Exception {
        String bootstrap = null, topic = null;
        long count = -1, timeout = 600, interval = 50;
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--bootstrap" -> bootstrap = args[++i];
                case "--topic" -> topic = args[++i];
                case "--count" -> count = Long.parseLong(args[++i]);
                case "--timeout-secs" -> timeout = Long.parseLong(args[++i]);
                case "--interval-ms" -> interval = Long.parseLong(args[++i]);
                default -> throw new IllegalArgumentException("unknown argument " + args[i]);
            }
        }
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        long start = System.nanoTime();
        long first = -1;
        long n = 0;
        try (Admin admin = Admin.create(p)) {
            Map<TopicPartition, OffsetSpec> req = new HashMap<>();
            while (req.isEmpty()) {
                try {
                    var desc = admin.describeTopics(java.util.List.of(topic)).allTopicNames().get().get(topic);
                    for (var pi : desc.partitions()) {
                        req.put(new TopicPartition(topic, pi.partition()), OffsetSpec.latest());
                    }
                } catch (Exception e) {
                    Thread.sleep(interval);
                }
            }
            while (true) {
                n = admin.listOffsets(req).all().get().values().stream()
                        .collect(Collectors.summingLong(r -> r.offset()));
                long now = System.nanoTime();
                if (n > 0 && first < 0) {
                    first = now;
                }
                if (n >= count || now - start > timeout * 1_000_000_000L) {
                    double s = (now - start) / 1e9;
                    double f = first < 0 ? s : (first - start) / 1e9;
                    System.out.printf("{\"records\":%d,\"seconds\":%.3f,\"first_seconds\":%.3f,\"rate\":%.0f}%n",
                            n, s, f, s > f ? n / (s - f) : 0.0);
                    System.exit(n >= count ? 0 : 1);
                }
                Thread.sleep(interval);
            }
        }
    }
}
