// End-to-end check of a Kafka broker: create a topic, produce a record,
// consume it back, delete the topic. Run through `scripts/kafka smoke`, or:
//   java -cp "$(scripts/kafka fetch)/*" scripts/kafka-smoke.java 127.0.0.1:PORT
// Exits 0 when the round trip works.

import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.UUID;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

public class KafkaSmoke {
    public static void main(String[] args) throws Exception {
        if (args.length != 1) {
            System.err.println("usage: kafka-smoke.java BOOTSTRAP");
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
}
