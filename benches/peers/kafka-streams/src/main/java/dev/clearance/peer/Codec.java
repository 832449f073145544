package dev.clearance.peer;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.StreamReadFeature;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.json.JsonMapper;
import java.nio.charset.StandardCharsets;
import java.time.LocalDate;
import java.time.OffsetDateTime;
import java.util.ArrayList;
import java.util.List;
import java.util.regex.Pattern;

/**
 * JSON in and out: requests and user records decoded as clearance's
 * src/event.rs decodes them (the checks that can change an outcome), and
 * the decision record written.
 */
public final class Codec {
    private Codec() {}

    /** Duplicate keys and trailing content are errors, as with serde_json. */
    static final ObjectMapper JSON = JsonMapper.builder(JsonFactory.builder()
                    .enable(StreamReadFeature.STRICT_DUPLICATE_DETECTION)
                    .build())
            .enable(DeserializationFeature.FAIL_ON_TRAILING_TOKENS)
            .build();

    /** clearance's engine.max_input_bytes default. */
    static final int MAX_INPUT_BYTES = 262144;

    /** RFC 3339 date-time, as the `time` crate parses it. */
    private static final Pattern RFC3339 = Pattern.compile(
            "\\d{4}-\\d{2}-\\d{2}[Tt]\\d{2}:\\d{2}:\\d{2}(\\.\\d+)?([Zz]|[+-]\\d{2}:\\d{2})");

    /** A request that could not be decoded; requestId is the salvaged id or null. */
    static final class Malformed extends Exception {
        final String requestId;

        Malformed(String message, String requestId) {
            super(message, null, false, false);
            this.requestId = requestId;
        }
    }

    /** Decode an access request, or throw Malformed (with the salvaged request_id, if any). */
    static Directive.Request decodeRequest(byte[] bytes) throws Malformed {
        if (bytes == null || bytes.length == 0) {
            throw new Malformed("empty", null);
        }
        JsonNode doc;
        try {
            doc = JSON.readTree(bytes);
        } catch (Exception e) {
            throw new Malformed("invalid_json", null);
        }
        String salvaged = null;
        if (doc != null && doc.isObject()) {
            JsonNode id = doc.get("request_id");
            if (id != null && id.isTextual() && !id.textValue().isEmpty()) {
                salvaged = id.textValue();
            }
        }
        if (bytes.length > MAX_INPUT_BYTES) {
            throw new Malformed("too_large", salvaged);
        }
        if (doc == null || !doc.isObject()) {
            throw new Malformed("invalid_document", salvaged);
        }
        String requestId = requiredText(doc, "request_id", salvaged);
        String subjectId = requiredText(doc, "subject_id", salvaged);
        String model = requiredText(doc, "model", salvaged);
        JsonNode org = doc.get("organization_id");
        if (org != null && !org.isNull() && !org.isTextual()) {
            throw new Malformed("organization_id", salvaged);
        }
        JsonNode t = doc.get("event_time");
        if (t == null || !t.isTextual() || !validEventTime(t.textValue())) {
            throw new Malformed("event_time", salvaged);
        }
        JsonNode g = doc.get("geo");
        Directive.Geo geo = null;
        if (g != null && !g.isNull()) {
            if (!g.isObject()) {
                throw new Malformed("geo", salvaged);
            }
            String country = optText(g, "country", salvaged);
            String subdivision = optText(g, "subdivision", salvaged);
            String postal = optText(g, "postal_code", salvaged);
            JsonNode conf = g.get("confidence");
            if (conf != null && !conf.isNull()) {
                if (!conf.isNumber() || !(conf.doubleValue() >= 0.0 && conf.doubleValue() <= 1.0)) {
                    throw new Malformed("geo.confidence", salvaged);
                }
            }
            for (String b : new String[] {"vpn", "hosting"}) {
                JsonNode v = g.get(b);
                if (v != null && !v.isBoolean()) {
                    throw new Malformed("geo." + b, salvaged);
                }
            }
            geo = new Directive.Geo(country, subdivision, postal);
        }
        if (requestId.isEmpty() || subjectId.isEmpty() || model.isEmpty()) {
            throw new Malformed("empty field", salvaged);
        }
        return new Directive.Request(requestId, subjectId, model, geo);
    }

    private static String requiredText(JsonNode doc, String field, String salvaged) throws Malformed {
        JsonNode v = doc.get(field);
        if (v == null || !v.isTextual()) {
            throw new Malformed(field, salvaged);
        }
        return v.textValue();
    }

    private static String optText(JsonNode doc, String field, String salvaged) throws Malformed {
        JsonNode v = doc.get(field);
        if (v == null || v.isNull()) {
            return null;
        }
        if (!v.isTextual()) {
            throw new Malformed(field, salvaged);
        }
        return v.textValue();
    }

    static boolean validEventTime(String s) {
        if (!RFC3339.matcher(s).matches()) {
            return false;
        }
        try {
            String norm = s.replace('t', 'T').replace('z', 'Z');
            int year = OffsetDateTime.parse(norm).getYear();
            return year >= 2000 && year <= 2200;
        } catch (Exception e) {
            return false;
        }
    }

    /**
     * Decode a change-feed value found under key {@code user:<id>}: the user
     * record, or null when there is none or it is not a valid user record
     * (clearance dead-letters such a record and keeps what it had).
     */
    static Directive.User decodeUser(byte[] bytes, String subjectId) {
        if (bytes == null || bytes.length == 0) {
            return null;
        }
        try {
            JsonNode doc = JSON.readTree(bytes);
            if (doc == null || !doc.isObject()) {
                return null;
            }
            JsonNode kind = doc.get("kind");
            JsonNode id = doc.get("id");
            JsonNode version = doc.get("version");
            JsonNode status = doc.get("us_person_status");
            if (kind == null || !"user".equals(kind.asText(null)) || id == null || !id.isTextual()
                    || !id.textValue().equals(subjectId) || version == null || !version.isIntegralNumber()
                    || version.bigIntegerValue().signum() < 0 || status == null || !status.isTextual()) {
                return null;
            }
            boolean usPerson;
            switch (status.textValue()) {
                case "citizen", "lawful_permanent_resident", "protected_individual" -> usPerson = true;
                case "foreign_person", "unknown" -> usPerson = false;
                default -> {
                    return null;
                }
            }
            List<Directive.Entry> entries = new ArrayList<>(2);
            JsonNode cits = doc.get("citizenships");
            if (cits != null && !cits.isNull()) {
                if (!cits.isArray()) {
                    return null;
                }
                for (JsonNode c : cits) {
                    if (!c.isObject() || c.get("country") == null || !c.get("country").isTextual()) {
                        return null;
                    }
                    Object d = date(c.get("acquired_on"));
                    if (d == BAD) {
                        return null;
                    }
                    entries.add(new Directive.Entry(c.get("country").textValue(), (LocalDate) d));
                }
            }
            JsonNode prs = doc.get("permanent_residencies");
            if (prs != null && !prs.isNull()) {
                if (!prs.isArray()) {
                    return null;
                }
                for (JsonNode r : prs) {
                    if (!r.isObject() || r.get("country") == null || !r.get("country").isTextual()
                            || r.get("status") == null || !r.get("status").isTextual()) {
                        return null;
                    }
                    String st = r.get("status").textValue();
                    if (!st.equals("granted") && !st.equals("pending") && !st.equals("revoked")) {
                        return null;
                    }
                    Object d = date(r.get("acquired_on"));
                    if (d == BAD) {
                        return null;
                    }
                    if (st.equals("granted")) {
                        entries.add(new Directive.Entry(r.get("country").textValue(), (LocalDate) d));
                    }
                }
            }
            boolean revoked = false;
            JsonNode rev = doc.get("revocation");
            if (rev != null && !rev.isNull()) {
                JsonNode at = rev.get("revoked_at");
                if (!rev.isObject() || at == null || !at.isTextual() || !RFC3339.matcher(at.textValue()).matches()) {
                    return null;
                }
                revoked = true;
            }
            return new Directive.User(usPerson, revoked, entries);
        } catch (Exception e) {
            return null;
        }
    }

    private static final Object BAD = new Object();

    /** A YYYY-MM-DD date (spaces around allowed), null when absent, BAD when unreadable. */
    private static Object date(JsonNode n) {
        if (n == null || n.isNull()) {
            return null;
        }
        if (!n.isTextual()) {
            return BAD;
        }
        String s = Directive.trim(n.textValue());
        if (s.length() != 10 || s.charAt(4) != '-' || s.charAt(7) != '-') {
            return BAD;
        }
        for (int i : new int[] {0, 1, 2, 3, 5, 6, 8, 9}) {
            if (s.charAt(i) < '0' || s.charAt(i) > '9') {
                return BAD;
            }
        }
        try {
            return LocalDate.of(Integer.parseInt(s.substring(0, 4)), Integer.parseInt(s.substring(5, 7)),
                    Integer.parseInt(s.substring(8, 10)));
        } catch (Exception e) {
            return BAD;
        }
    }

    /** The decision record: {"request_id":...,"outcome":...,"reasons":[...]}. */
    static byte[] encodeDecision(String requestId, boolean allow, List<String> reasons) {
        StringBuilder b = new StringBuilder(64 + requestId.length());
        b.append("{\"request_id\":");
        quote(b, requestId);
        b.append(",\"outcome\":\"").append(allow ? "allow" : "deny").append("\",\"reasons\":[");
        for (int i = 0; i < reasons.size(); i++) {
            if (i > 0) {
                b.append(',');
            }
            quote(b, reasons.get(i));
        }
        b.append("]}");
        return b.toString().getBytes(StandardCharsets.UTF_8);
    }

    static void quote(StringBuilder b, String s) {
        b.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"' -> b.append("\\\"");
                case '\\' -> b.append("\\\\");
                case '\n' -> b.append("\\n");
                case '\r' -> b.append("\\r");
                case '\t' -> b.append("\\t");
                default -> {
                    if (c < 0x20) {
                        b.append(String.format("\\u%04x", (int) c));
                    } else {
                        b.append(c);
                    }
                }
            }
        }
        b.append('"');
    }

    /** Read a decision record's request_id and outcome (for Compare). */
    static String[] readDecision(byte[] bytes) {
        try (JsonParser p = JSON.getFactory().createParser(bytes)) {
            JsonNode n = JSON.readTree(p);
            JsonNode id = n.get("request_id");
            JsonNode outcome = n.get("outcome");
            JsonNode reasons = n.get("reasons");
            StringBuilder rs = new StringBuilder();
            if (reasons != null && reasons.isArray()) {
                for (JsonNode r : reasons) {
                    if (rs.length() > 0) {
                        rs.append(',');
                    }
                    rs.append(r.asText());
                }
            }
            return new String[] {id == null ? null : id.asText(), outcome == null ? null : outcome.asText(),
                rs.toString()};
        } catch (Exception e) {
            return null;
        }
    }
}
