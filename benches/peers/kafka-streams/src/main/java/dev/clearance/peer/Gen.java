package dev.clearance.peer;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.SplittableRandom;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * A synthetic feed and request stream for the agreement check, broader than
 * clearance loadgen's ten categories: every U.S. person status, zero to three
 * citizenships and residencies (granted, pending, revoked) with dates that
 * tie, are missing or differ, codes in lower case, padded or not codes at
 * all, revocations, updates (version 2 after 1), tombstones, organization
 * records, unknown subjects; requests for tagged, untagged and unknown
 * models, with or without geolocation, in sanctioned countries, Crimean,
 * DNR and LNR subdivisions and postal codes, and some malformed requests.
 *
 * <p>Records are valid for clearance's decoder (a record clearance would
 * dead-letter is never produced). Prints {"feed":N,"requests":N,"decisions":N}
 * where decisions is how many requests get a decision (a malformed request
 * without a readable request_id gets none).
 *
 * <p>usage: Gen --bootstrap B --feed TOPIC --requests TOPIC [--subjects N]
 * [--count M] [--seed S] [--prefix P] [--malformed-every K] [--no-feed]
 */
public final class Gen {
    private Gen() {}

    static final String[] COUNTRIES = {
        "US", "US", "CN", "CN", "RU", "GB", "IN", "MO", "IR", "CU", "KP", "DE", "SG", "UA", "BY", "VE",
        "cn", " gb ", "mo", "X1", "C", "FR", "JP", "HK"
    };
    static final String[] STATUSES = {
        "citizen", "lawful_permanent_resident", "protected_individual", "foreign_person", "foreign_person",
        "foreign_person", "unknown"
    };
    static final String[] RES_STATUSES = {"granted", "granted", "pending", "revoked"};
    static final String[] MODELS = {"fable-5", "fable-5", "mythos-5", "haiku-4", "sonnet-4", "opus-4", "gpt-x"};
    static final String[] GEO_COUNTRIES = {
        "US", "US", "US", "GB", "DE", "CN", "RU", "IR", "CU", "KP", "UA", "UA", "ir", " KP", "", "NL", "SG", "MO"
    };
    static final String[] SUBDIVISIONS = {
        "US-CA", "UA-43", "ua-40", "UA-14", "UA-09", "UA-30", "IR-01", "CU-03", "KP-01", "", " UA-43 ", "NL-NH"
    };
    static final String[] POSTALS = {"95000", "9-5 011", "9", "12345", "98A", "96\u00fc", " 99 001", "01001", "97"};

    public static void main(String[] args) throws Exception {
        String bootstrap = null, feedTopic = null, reqTopic = null, prefix = "g";
        int subjects = 10_000, count = 100_000, malformedEvery = 1000;
        long seed = 12;
        boolean noFeed = false;
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--bootstrap" -> bootstrap = args[++i];
                case "--feed" -> feedTopic = args[++i];
                case "--requests" -> reqTopic = args[++i];
                case "--subjects" -> subjects = Integer.parseInt(args[++i]);
                case "--count" -> count = Integer.parseInt(args[++i]);
                case "--seed" -> seed = Long.parseLong(args[++i]);
                case "--prefix" -> prefix = args[++i];
                case "--malformed-every" -> malformedEvery = Integer.parseInt(args[++i]);
                case "--no-feed" -> noFeed = true;
                default -> throw new IllegalArgumentException("unknown argument " + args[i]);
            }
        }
        if (bootstrap == null || feedTopic == null || reqTopic == null) {
            throw new IllegalArgumentException("--bootstrap, --feed and --requests are required");
        }
        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ProducerConfig.ACKS_CONFIG, "all");
        p.put(ProducerConfig.LINGER_MS_CONFIG, 20);
        p.put(ProducerConfig.BATCH_SIZE_CONFIG, 256 * 1024);
        p.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, "lz4");
        SplittableRandom rnd = new SplittableRandom(seed);
        long feed = 0, requests = 0, decisions = 0;
        try (KafkaProducer<String, byte[]> prod =
                new KafkaProducer<>(p, new StringSerializer(), new ByteArraySerializer())) {
            if (!noFeed) {
                for (int i = 0; i < subjects; i++) {
                    String id = prefix + "u" + i;
                    int kind = rnd.nextInt(100);
                    if (kind < 10) {
                        continue; // no record: unknown subject
                    }
                    prod.send(new ProducerRecord<>(feedTopic, "user:" + id, user(rnd, id, 1)));
                    feed++;
                    if (kind < 15) {
                        prod.send(new ProducerRecord<>(feedTopic, "user:" + id, user(rnd, id, 2)));
                        feed++;
                    } else if (kind < 17) {
                        prod.send(new ProducerRecord<>(feedTopic, "user:" + id, (byte[]) null));
                        feed++;
                    }
                    if (i % 50 == 0) {
                        String org = "{\"kind\":\"organization\",\"id\":\"" + prefix + "o" + i
                                + "\",\"version\":1,\"headquarters\":\"SG\",\"owners\":[],\"screening_hits\":[],"
                                + "\"authorizations\":[]}";
                        prod.send(new ProducerRecord<>(feedTopic, "organization:" + prefix + "o" + i,
                                org.getBytes(StandardCharsets.UTF_8)));
                        feed++;
                    }
                }
                prod.flush();
            }
            for (int n = 0; n < count; n++) {
                int s = rnd.nextInt(subjects + subjects / 20 + 1);
                String subject = prefix + "u" + s;
                String rid = prefix + "r" + seed + "-" + n;
                String doc;
                if (malformedEvery > 0 && n % malformedEvery == malformedEvery - 1) {
                    switch (rnd.nextInt(4)) {
                        case 0 -> doc = "{\"request_id\":\"" + rid + "\",\"event_time\":\"2026-11-28T12:00:00Z\","
                                + "\"model\":\"fable-5\"}"; // no subject_id
                        case 1 -> doc = "{\"request_id\":\"" + rid + "\",\"event_time\":\"1969-01-01T00:00:00Z\","
                                + "\"subject_id\":\"" + subject + "\",\"model\":\"fable-5\"}";
                        case 2 -> doc = "{\"request_id\":\"" + rid + "\",\"event_time\":\"2026-11-28T12:00:00Z\","
                                + "\"subject_id\":\"" + subject + "\",\"model\":\"haiku-4\",\"geo\":[\"US\"]}";
                        default -> doc = "not json " + rid;
                    }
                    if (!doc.startsWith("not json")) {
                        decisions++;
                    }
                } else {
                    doc = request(rnd, rid, subject);
                    decisions++;
                }
                prod.send(new ProducerRecord<>(reqTopic, subject, doc.getBytes(StandardCharsets.UTF_8)));
                requests++;
            }
            prod.flush();
        }
        System.out.println("{\"feed\":" + feed + ",\"requests\":" + requests + ",\"decisions\":" + decisions + "}");
    }

    static String pick(SplittableRandom r, String[] a) {
        return a[r.nextInt(a.length)];
    }

    static String date(SplittableRandom r) {
        return switch (r.nextInt(6)) {
            case 0 -> null;
            case 1 -> "1990-01-01";
            case 2 -> "2010-06-15";
            case 3 -> " 2020-02-29 ";
            default -> String.format("%04d-%02d-%02d", 1950 + r.nextInt(76), 1 + r.nextInt(12), 1 + r.nextInt(28));
        };
    }

    static byte[] user(SplittableRandom r, String id, int version) {
        StringBuilder b = new StringBuilder(256);
        b.append("{\"kind\":\"user\",\"id\":\"").append(id).append("\",\"version\":").append(version)
                .append(",\"updated_at\":\"2026-11-20T09:12:44Z\",\"us_person_status\":\"").append(pick(r, STATUSES))
                .append("\",\"citizenships\":[");
        int nc = r.nextInt(10) < 1 ? 0 : 1 + r.nextInt(r.nextInt(4) == 0 ? 3 : 1);
        List<String> parts = new ArrayList<>();
        for (int i = 0; i < nc; i++) {
            String d = date(r);
            parts.add("{\"country\":" + q(pick(r, COUNTRIES)) + (d == null ? "" : ",\"acquired_on\":" + q(d)) + "}");
        }
        b.append(String.join(",", parts)).append("],\"permanent_residencies\":[");
        parts.clear();
        int nr = r.nextInt(3) == 0 ? 1 + r.nextInt(2) : 0;
        for (int i = 0; i < nr; i++) {
            String d = date(r);
            parts.add("{\"country\":" + q(pick(r, COUNTRIES)) + ",\"status\":" + q(pick(r, RES_STATUSES))
                    + (d == null ? "" : ",\"acquired_on\":" + q(d)) + "}");
        }
        b.append(String.join(",", parts)).append("]");
        if (r.nextInt(4) == 0) {
            b.append(",\"organization_id\":\"org-").append(r.nextInt(100)).append("\",\"relationship\":\"employee\"");
        }
        b.append(",\"verification\":{\"status\":\"verified\",\"verified_at\":\"2026-03-02T16:40:00Z\"}");
        if (r.nextInt(20) == 0) {
            b.append(",\"revocation\":{\"revoked_at\":\"2026-11-28T13:59:30Z\",\"reason\":\"case\"}");
        } else if (r.nextInt(20) == 0) {
            b.append(",\"revocation\":null");
        }
        return b.append('}').toString().getBytes(StandardCharsets.UTF_8);
    }

    static String request(SplittableRandom r, String rid, String subject) {
        StringBuilder b = new StringBuilder(256);
        b.append("{\"request_id\":").append(q(rid)).append(",\"event_time\":\"2026-11-28T14:03:27.512Z\",")
                .append("\"subject_id\":").append(q(subject)).append(",\"model\":").append(q(pick(r, MODELS)));
        int g = r.nextInt(10);
        if (g == 0) {
            // no geolocation
        } else if (g == 1) {
            b.append(",\"geo\":null");
        } else {
            List<String> f = new ArrayList<>();
            if (r.nextInt(8) != 0) {
                f.add("\"country\":" + q(pick(r, GEO_COUNTRIES)));
            }
            if (r.nextInt(3) == 0) {
                f.add("\"subdivision\":" + q(pick(r, SUBDIVISIONS)));
            }
            if (r.nextInt(3) == 0) {
                f.add("\"postal_code\":" + q(pick(r, POSTALS)));
            }
            f.add("\"confidence\":0.9");
            f.add("\"vpn\":" + (r.nextInt(10) == 0));
            b.append(",\"geo\":{").append(String.join(",", f)).append('}');
        }
        return b.append('}').toString();
    }

    static String q(String s) {
        StringBuilder b = new StringBuilder();
        Codec.quote(b, s);
        return b.toString();
    }
}
