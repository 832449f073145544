package dev.clearance.peer;

import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Objects;
import java.util.SplittableRandom;

/**
 * Offline checks: the streaming decoders agree with the tree decoders (the
 * reference) on Gen's records and on hand-written edge cases, and a few
 * decisions are what directive_core.toml gives. Prints "N passed, 0 failed".
 *
 * <p>usage: SelfTest [--n COUNT]
 */
public final class SelfTest {
    private SelfTest() {}

    static int passed = 0;
    static int failed = 0;

    static void check(boolean ok, String what) {
        if (ok) {
            passed++;
        } else {
            failed++;
            System.err.println("FAILED: " + what);
        }
    }

    static Object reqTree(String doc) {
        try {
            return Codec.treeRequest(doc.getBytes(StandardCharsets.UTF_8));
        } catch (Codec.Malformed e) {
            return "malformed:" + e.requestId;
        }
    }

    static Object req(String doc) {
        try {
            return Codec.decodeRequest(doc.getBytes(StandardCharsets.UTF_8));
        } catch (Codec.Malformed e) {
            return "malformed:" + e.requestId;
        }
    }

    static Directive.User streamUser(byte[] u, String id) {
        try {
            return Codec.streamUser(u, id);
        } catch (Exception e) {
            return null;
        }
    }

    public static void main(String[] args) {
        int n = args.length == 2 ? Integer.parseInt(args[1]) : 100_000;
        SplittableRandom r = new SplittableRandom(5);
        for (int i = 0; i < n; i++) {
            byte[] u = Gen.user(r, "u" + i, 1 + r.nextInt(3));
            check(Objects.equals(streamUser(u, "u" + i), Codec.treeUser(u, "u" + i)),
                    "user " + new String(u, StandardCharsets.UTF_8));
            String d = Gen.request(r, "r" + i, "u" + i);
            check(Objects.equals(req(d), reqTree(d)), "request " + d);
        }
        String base = "{\"request_id\":\"r\",\"event_time\":\"2026-11-28T14:03:27Z\",\"subject_id\":\"u\",\"model\":\"fable-5\"";
        String[] edge = {
            base + "}",
            base + ",\"geo\":null}",
            base + ",\"geo\":{}}",
            base + ",\"geo\":{\"country\":null,\"vpn\":null}}",
            base + ",\"geo\":{\"confidence\":1.5}}",
            base + ",\"geo\":{\"confidence\":\"x\"}}",
            base + ",\"geo\":{\"country\":7}}",
            base + ",\"organization_id\":null}",
            base + ",\"organization_id\":3}",
            base + ",\"x\":[1,{\"a\":2}]}",
            base + "} trailing",
            base + ",\"model\":\"dup\"}",
            base.replace("14:03:27Z", "14:03Z") + "}",
            base.replace("14:03:27Z", "14:03:27.5+01:00") + "}",
            base.replace("14:03:27Z", "14:03:27+01") + "}",
            base.replace("2026-11-28", "2026-02-30") + "}",
            base.replace("2026-11-28", "2201-01-01") + "}",
            base.replace("T14", "t14").replace("27Z", "27z") + "}",
            base.replace("\"u\"", "\"\"") + "}",
            base.replace("\"u\"", "null") + "}",
            "[\"r\"]",
            "",
            "{}",
        };
        for (String e : edge) {
            check(Objects.equals(req(e), reqTree(e)), "edge request " + e + ": " + req(e) + " vs " + reqTree(e));
        }
        String ub = "{\"kind\":\"user\",\"id\":\"u\",\"version\":1,\"us_person_status\":\"foreign_person\"";
        String[] users = {
            ub + "}",
            ub + ",\"citizenships\":null}",
            ub + ",\"citizenships\":[[\"CN\"]]}",
            ub + ",\"citizenships\":[{\"country\":\"CN\",\"acquired_on\":\"1990-02-30\"}]}",
            ub + ",\"citizenships\":[{\"country\":\"CN\",\"acquired_on\":null}]}",
            ub + ",\"permanent_residencies\":[{\"country\":\"US\",\"status\":\"granted\"}],"
                    + "\"citizenships\":[{\"country\":\"CN\",\"acquired_on\":\"1990-01-01\"}]}",
            ub + ",\"permanent_residencies\":[{\"country\":\"US\",\"status\":\"maybe\"}]}",
            ub + ",\"revocation\":{}}",
            ub + ",\"revocation\":{\"revoked_at\":\"2026-01-01T00:00:00Z\"}}",
            ub.replace("\"version\":1", "\"version\":1.0") + "}",
            ub.replace("\"version\":1", "\"version\":-1") + "}",
            ub.replace("\"user\"", "\"organization\"") + "}",
            ub.replace("\"id\":\"u\"", "\"id\":\"v\"") + "}",
            ub.replace("foreign_person", "alien") + "}",
            ub + ",\"kind\":\"user\"}",
            ub + "} x",
        };
        for (String e : users) {
            byte[] b = e.getBytes(StandardCharsets.UTF_8);
            Directive.User st = streamUser(b, "u");
            check(st == null || st.equals(Codec.treeUser(b, "u")), "edge user " + e);
            check(Objects.equals(Codec.decodeUser(b, "u"), Codec.treeUser(b, "u")), "edge user decode " + e);
        }
        check(Codec.decodeUser((ub + "}").getBytes(StandardCharsets.UTF_8), "u") != null, "user decodes");
        check(req(base + "}") instanceof Directive.Request, "base decodes");
        check(req(base.replace("14:03:27Z", "14:03Z") + "}").equals("malformed:r"), "no seconds is malformed");
        check(req(base.replace("14:03:27Z", "14:03:27.5+01:00") + "}") instanceof Directive.Request, "offset ok");

        // Decisions (hand-checked against directive_core.toml).
        Directive.User cn = new Directive.User(false, false, List.of(new Directive.Entry("CN", null)));
        Directive.User gb = new Directive.User(false, false, List.of(new Directive.Entry(" gb ", null)));
        Directive.User us = new Directive.User(true, false, List.of(new Directive.Entry("US", null)));
        Directive.User none = new Directive.User(false, false, List.of());
        Directive.User cnThenGb = new Directive.User(false, false, List.of(
                new Directive.Entry("CN", java.time.LocalDate.of(1990, 1, 1)),
                new Directive.Entry("GB", java.time.LocalDate.of(2015, 1, 1))));
        Directive.Geo usGeo = new Directive.Geo("US", null, null);
        check(d("fable-5", usGeo, cn).equals("deny[restricted_nationality]"), "cn tagged");
        check(d("haiku-4", usGeo, cn).equals("allow[unrestricted_model]"), "cn untagged");
        check(d("fable-5", usGeo, gb).equals("allow[nationality_not_restricted]"), "gb tagged");
        check(d("fable-5", usGeo, us).equals("allow[us_person]"), "us tagged");
        check(d("fable-5", usGeo, none).equals("deny[nationality_unknown]"), "no nationality");
        check(d("fable-5", usGeo, cnThenGb).equals("allow[nationality_not_restricted]"), "most recent GB");
        check(d("fable-5", usGeo, null).equals("deny[unknown_subject]"), "unknown subject");
        check(d("haiku-4", usGeo, null).equals("allow[unrestricted_model]"), "unknown subject untagged");
        check(d("gpt-x", usGeo, us).equals("deny[unknown_model]"), "unknown model");
        check(d("fable-5", new Directive.Geo("UA", null, "95-011"), us).equals("deny[sanctioned_location]"), "crimea postal");
        check(d("fable-5", new Directive.Geo("UA", null, "9"), us).equals("allow[us_person]"), "short postal");
        check(d("fable-5", new Directive.Geo(null, "ua-14", null), us).equals("deny[sanctioned_location]"), "dnr");
        check(d("fable-5", new Directive.Geo(null, "IR-01", null), us).equals("deny[sanctioned_location]"), "ir sub");
        check(d("fable-5", null, us).equals("allow[us_person]"), "no geo skipped");
        check(d("fable-5", new Directive.Geo(" ir", null, null),
                new Directive.User(false, true, List.of(new Directive.Entry("X1", null))))
                .equals("deny[sanctioned_location, subject_revoked, nationality_unknown]"), "all at once");
        System.out.println(passed + " passed, " + failed + " failed");
        System.exit(failed == 0 ? 0 : 1);
    }

    static String d(String model, Directive.Geo geo, Directive.User u) {
        Directive.Verdict v = Directive.decide(new Directive.Request("r", "u", model, geo), u);
        return (v.allow() ? "allow" : "deny") + v.reasons();
    }
}
