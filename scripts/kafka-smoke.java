// End-to-end check of a Kafka broker. Run through `scripts/kafka smoke`, or:
//   java -cp "$(scripts/kafka fetch)/*" scripts/kafka-smoke.java BOOTSTRAP [MODE]
// Modes:
//   (none)           create a topic, produce a record, consume it back, delete
//                    the topic; exits 0 when the round trip works.
//   produce TOPIC N  create TOPIC (3 partitions) unless it exists, and append
//                    N records (acks=all, idempotent) that continue its key
//                    sequence: keys k-C..k-(C+N-1), C = records it holds.
//   check TOPIC N    read every partition of TOPIC from the beginning up to
//                    its end offset; exits 0 only when it holds exactly N
//                    records with the keys k-0..k-(N-1), each once (to check
//                    that data survived a broker restart).

import java.time.Duration;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.ExecutionException;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

public class KafkaSmoke {
    public static void main(String[] args) throws Exception {
        if (args.length == 4 && args[1].equals("produce")) {
            produce(args[0], args[2], Integer.parseInt(args[3]));
            return;
        }
        if (args.length == 4 && args[1].equals("check")) {
            check(args[0], args[2], Integer.parseInt(args[3]));
            return;
        }
        if (args.length != 1) {
            System.err.println("usage: kafka-smoke.java BOOTSTRAP [produce|check TOPIC N]");
            System.exit(2);
        }
        String bootstrap = args[0];
        String topic = "clearance-smoke-" + UUID.randomUUID();
        String value = "{\"hello\":\"" + UUID.randomUUID() + "\"}";
        long t0 = System.nanoTime();
        Properties common = new Properties();
        common.put("bootstrap.servers", bootstrap);

        try (Admin admin = Admin.create(common)) {
            String cluster = admin.describeCluster().clusterId().get();
            admin.createTopics(List.of(new NewTopic(topic, 3, (short) 1)
                    .configs(Map.of("cleanup.policy", "compact")))).all().get();
            System.err.printf("smoke: cluster %s, created %s%n", cluster, topic);

            Properties pp = new Properties();
            pp.putAll(common);
            pp.put("acks", "all");
            pp.put("enable.idempotence", "true");
            try (KafkaProducer<String, String> p =
                    new KafkaProducer<>(pp, new StringSerializer(), new StringSerializer())) {
                RecordMetadata md = p.send(new ProducerRecord<>(topic, "user:smoke", value)).get();
                System.err.printf("smoke: produced to partition %d offset %d%n",
                        md.partition(), md.offset());
            }

            Properties cp = new Properties();
            cp.putAll(common);
            cp.put("group.id", "clearance-smoke-" + UUID.randomUUID());
            cp.put("auto.offset.reset", "earliest");
            try (KafkaConsumer<String, String> c =
                    new KafkaConsumer<>(cp, new StringDeserializer(), new StringDeserializer())) {
                c.subscribe(List.of(topic));
                long deadline = System.currentTimeMillis() + 30_000;
                boolean found = false;
                while (!found && System.currentTimeMillis() < deadline) {
                    for (ConsumerRecord<String, String> r : c.poll(Duration.ofMillis(500))) {
                        found |= "user:smoke".equals(r.key()) && value.equals(r.value());
                    }
                }
                if (!found) {
                    System.err.println("smoke: FAILED: record not consumed within 30s");
                    System.exit(1);
                }
                c.commitSync();
            }
            admin.deleteTopics(List.of(topic)).all().get();
        }
        System.err.printf("smoke: ok (%d ms)%n", (System.nanoTime() - t0) / 1_000_000);
        System.out.println("ok");
    }

    static Properties common(String bootstrap) {
        Properties p = new Properties();
        p.put("bootstrap.servers", bootstrap);
        return p;
    }

    static void produce(String bootstrap, String topic, int n) throws Exception {
        long t0 = System.nanoTime();
        try (Admin admin = Admin.create(common(bootstrap))) {
            try {
                admin.createTopics(List.of(new NewTopic(topic, 3, (short) 1))).all().get();
                System.err.printf("smoke: created %s%n", topic);
            } catch (ExecutionException e) {
                if (!(e.getCause() instanceof TopicExistsException)) {
                    throw e;
                }
            }
        }
        long first = recordCount(bootstrap, topic);
        Properties pp = common(bootstrap);
        pp.put("acks", "all");
        pp.put("enable.idempotence", "true");
        pp.put("linger.ms", "5");
        try (KafkaProducer<String, String> p =
                new KafkaProducer<>(pp, new StringSerializer(), new StringSerializer())) {
            List<java.util.concurrent.Future<RecordMetadata>> sent = new ArrayList<>(n);
            for (long i = first; i < first + n; i++) {
                sent.add(p.send(new ProducerRecord<>(topic, "k-" + i, "v-" + i)));
            }
            p.flush();
            for (var f : sent) {
                f.get(); // throws if any record was not acknowledged
            }
        }
        System.err.printf("smoke: produced %d records to %s, keys k-%d..k-%d (%d ms)%n",
                n, topic, first, first + n - 1, (System.nanoTime() - t0) / 1_000_000);
        System.out.println("ok " + (first + n));
    }

    static List<TopicPartition> partitions(String bootstrap, String topic) throws Exception {
        List<TopicPartition> parts = new ArrayList<>();
        try (Admin admin = Admin.create(common(bootstrap))) {
            TopicDescription d = admin.describeTopics(List.of(topic)).allTopicNames().get().get(topic);
            d.partitions().forEach(p -> parts.add(new TopicPartition(topic, p.partition())));
        }
        return parts;
    }

    /** Records in TOPIC: the sum of (end - beginning) offsets. */
    static long recordCount(String bootstrap, String topic) throws Exception {
        List<TopicPartition> parts = partitions(bootstrap, topic);
        try (KafkaConsumer<String, String> c = new KafkaConsumer<>(common(bootstrap),
                new StringDeserializer(), new StringDeserializer())) {
            Map<TopicPartition, Long> begin = c.beginningOffsets(parts, Duration.ofSeconds(30));
            Map<TopicPartition, Long> end = c.endOffsets(parts, Duration.ofSeconds(30));
            long n = 0;
            for (TopicPartition tp : parts) {
                n += end.get(tp) - begin.get(tp);
            }
            return n;
        }
    }

    static void check(String bootstrap, String topic, int n) throws Exception {
        long t0 = System.nanoTime();
        List<TopicPartition> parts = partitions(bootstrap, topic);
        Properties cp = common(bootstrap);
        cp.put("enable.auto.commit", "false");
        try (KafkaConsumer<String, String> c =
                new KafkaConsumer<>(cp, new StringDeserializer(), new StringDeserializer())) {
            c.assign(parts);
            c.seekToBeginning(parts);
            Map<TopicPartition, Long> end = c.endOffsets(parts, Duration.ofSeconds(30));
            Set<String> keys = new HashSet<>();
            long count = 0;
            long deadline = System.currentTimeMillis() + 30_000;
            while (System.currentTimeMillis() < deadline) {
                boolean done = true;
                for (TopicPartition tp : parts) {
                    done &= c.position(tp) >= end.get(tp);
                }
                if (done) {
                    break;
                }
                for (ConsumerRecord<String, String> r : c.poll(Duration.ofMillis(500))) {
                    count++;
                    boolean fresh = r.key() != null && keys.add(r.key());
                    if (r.key() == null || !fresh
                            || !("v-" + r.key().substring(2)).equals(r.value())) {
                        System.err.printf("smoke: FAILED: unexpected record %s=%s at %s-%d@%d%n",
                                r.key(), r.value(), r.topic(), r.partition(), r.offset());
                        System.exit(1);
                    }
                }
            }
            boolean all = count == n;
            for (int i = 0; all && i < n; i++) {
                all = keys.contains("k-" + i);
            }
            if (!all) {
                System.err.printf("smoke: FAILED: %s holds %d records (%d distinct keys), expected %d (end offsets %s)%n",
                        topic, count, keys.size(), n, end);
                System.exit(1);
            }
        }
        System.err.printf("smoke: %s holds the %d records (%d ms)%n",
                topic, n, (System.nanoTime() - t0) / 1_000_000);
        System.out.println("ok " + n);
    }
}
