package dev.clearance.peer;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Comparator;
import java.util.List;
import java.util.Properties;
import java.util.UUID;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.stream.Stream;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.TopologyConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.GlobalKTable;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.Stores;

/**
 * The Kafka Streams peer: requests (KStream) left-joined with the change
 * feed (GlobalKTable keyed user:&lt;id&gt; / organization:&lt;id&gt;), each decided
 * by {@link Directive}, one decision per request to the output topic, keyed
 * by request_id.
 *
 * <p>Prints READY on stdout once the instance is RUNNING (the global table is
 * restored before that), and nothing else; logs go to stderr.
 */
public final class ClearancePeer {
    private ClearancePeer() {}

    static final String USAGE = "usage: ClearancePeer --bootstrap B --requests TOPIC --feed TOPIC --out TOPIC"
            + " [--threads N] [--app-id ID] [--linger-ms L] [--store memory|rocksdb] [--state-dir DIR]";

    /** Parsed request, or the salvaged id of a malformed one. */
    record In(Directive.Request req, String malformedId) {}

    public static void main(String[] args) throws Exception {
        String bootstrap = null, requests = null, feed = null, out = null, appId = null, store = "memory",
                stateDir = null;
        int threads = Runtime.getRuntime().availableProcessors();
        int linger = 5;
        for (int i = 0; i < args.length; i++) {
            String a = args[i];
            if (a.equals("-h") || a.equals("--help")) {
                System.err.println(USAGE);
                System.exit(0);
            }
            if (i + 1 >= args.length) {
                die("missing value for " + a);
            }
            String v = args[++i];
            switch (a) {
                case "--bootstrap" -> bootstrap = v;
                case "--requests" -> requests = v;
                case "--feed" -> feed = v;
                case "--out" -> out = v;
                case "--threads" -> threads = Integer.parseInt(v);
                case "--app-id" -> appId = v;
                case "--linger-ms" -> linger = Integer.parseInt(v);
                case "--store" -> store = v;
                case "--state-dir" -> stateDir = v;
                default -> die("unknown argument " + a);
            }
        }
        if (bootstrap == null || requests == null || feed == null || out == null) {
            die("--bootstrap, --requests, --feed and --out are required");
        }
        if (!store.equals("memory") && !store.equals("rocksdb")) {
            die("--store is memory or rocksdb");
        }
        if (appId == null) {
            appId = "clearance-peer-" + UUID.randomUUID();
        }
        boolean tempState = stateDir == null;
        Path state = tempState ? Files.createTempDirectory("clearance-peer-") : Path.of(stateDir);

        Properties p = new Properties();
        p.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
        p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, threads);
        p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.AT_LEAST_ONCE);
        p.put(StreamsConfig.STATE_DIR_CONFIG, state.toString());
        p.put(StreamsConfig.producerPrefix(ProducerConfig.COMPRESSION_TYPE_CONFIG), "lz4");
        p.put(StreamsConfig.producerPrefix(ProducerConfig.LINGER_MS_CONFIG), linger);
        p.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
        // The default (log and fail) for the global thread too; set, it also
        // silences a deprecation warning of 4.4.
        p.put("processing.exception.handler.global.enabled", "true");

        Topology topology = topology(p, requests, feed, out, store.equals("memory"));
        System.err.println(topology.describe());
        KafkaStreams streams = new KafkaStreams(topology, p);

        AtomicBoolean ready = new AtomicBoolean();
        CountDownLatch done = new CountDownLatch(1);
        streams.setStateListener((now, before) -> {
            if (now == KafkaStreams.State.RUNNING && ready.compareAndSet(false, true)) {
                System.out.println("READY");
                System.out.flush();
            }
            if (now == KafkaStreams.State.ERROR || now == KafkaStreams.State.NOT_RUNNING) {
                done.countDown();
            }
        });
        streams.setUncaughtExceptionHandler(e -> {
            System.err.println("stream thread failed: " + e);
            e.printStackTrace();
            return org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse
                    .SHUTDOWN_CLIENT;
        });
        // On SIGTERM/SIGINT the JVM exits once its hooks are done, without
        // waiting for main: the hook closes and cleans up itself.
        Thread hook = new Thread(() -> {
            streams.close(Duration.ofSeconds(30));
            if (tempState) {
                deleteTree(state);
            }
            done.countDown();
        }, "shutdown");
        Runtime.getRuntime().addShutdownHook(hook);
        streams.start();
        done.await();
        streams.close(Duration.ofSeconds(30));
        if (tempState) {
            deleteTree(state);
        }
        if (!ready.get()) {
            System.err.println("stopped before RUNNING");
        }
    }

    static Topology topology(Properties props, String requests, String feed, String out, boolean inMemory) {
        StreamsBuilder b = new StreamsBuilder(new TopologyConfig(new StreamsConfig(props)));
        Materialized<String, byte[], KeyValueStore<Bytes, byte[]>> m = inMemory
                ? Materialized.<String, byte[]>as(Stores.inMemoryKeyValueStore("eligibility"))
                : Materialized.<String, byte[], KeyValueStore<Bytes, byte[]>>as("eligibility");
        GlobalKTable<String, byte[]> eligibility = b.globalTable(feed,
                Consumed.with(Serdes.String(), Serdes.ByteArray()),
                m.withKeySerde(Serdes.String()).withValueSerde(Serdes.ByteArray()));
        b.stream(requests, Consumed.with(Serdes.ByteArray(), Serdes.ByteArray()))
                .mapValues(ClearancePeer::decode)
                .leftJoin(eligibility,
                        (k, in) -> in.req() == null ? "" : "user:" + in.req().subjectId(),
                        ClearancePeer::decide)
                .filter((k, v) -> v != null)
                .map((k, v) -> KeyValue.pair(v.key, v.value))
                .to(out, Produced.with(Serdes.String(), Serdes.ByteArray()));
        return b.build();
    }

    static In decode(byte[] value) {
        try {
            return new In(Codec.decodeRequest(value), null);
        } catch (Codec.Malformed e) {
            return new In(null, e.requestId);
        }
    }

    /** The output record. */
    static final class Out {
        final String key;
        final byte[] value;

        Out(String key, byte[] value) {
            this.key = key;
            this.value = value;
        }
    }

    static Out decide(In in, byte[] subjectRecord) {
        if (in.req() == null) {
            // clearance dead-letters it and, when the request_id can be read,
            // publishes a deny (malformed_request). No dead-letter topic here.
            if (in.malformedId() == null) {
                return null;
            }
            return new Out(in.malformedId(),
                    Codec.encodeDecision(in.malformedId(), false, List.of(Directive.MALFORMED_REQUEST)));
        }
        Directive.User user = Codec.decodeUser(subjectRecord, in.req().subjectId());
        Directive.Verdict v = Directive.decide(in.req(), user);
        return new Out(in.req().requestId(), Codec.encodeDecision(in.req().requestId(), v.allow(), v.reasons()));
    }

    static void die(String msg) {
        System.err.println("error: " + msg);
        System.err.println(USAGE);
        System.exit(2);
    }

    static void deleteTree(Path root) {
        try (Stream<Path> s = Files.walk(root)) {
            s.sorted(Comparator.reverseOrder()).forEach(f -> {
                try {
                    Files.deleteIfExists(f);
                } catch (IOException ignored) {
                    // best effort
                }
            });
        } catch (IOException ignored) {
            // best effort
        }
    }
}
