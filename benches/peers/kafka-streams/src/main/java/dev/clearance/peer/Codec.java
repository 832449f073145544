package dev.clearance.peer;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;
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

    /**
     * Decode an access request, or throw Malformed (with the salvaged
     * request_id, if any). A streaming pass first; whatever it does not
     * accept goes through the tree decoder, which gives the verdict.
     */
    static Directive.Request decodeRequest(byte[] bytes) throws Malformed {
        if (bytes != null && bytes.length > 0 && bytes.length <= MAX_INPUT_BYTES) {
            try {
                Directive.Request r = streamRequest(bytes);
                if (r != null) {
                    return r;
                }
            } catch (Exception e) {
                // the tree decoder says what is wrong
            }
        }
        return treeRequest(bytes);
    }

    /** The streaming decoder: the request, or null when anything is off. */
    static Directive.Request streamRequest(byte[] bytes) throws java.io.IOException {
        try (JsonParser p = JSON.getFactory().createParser(bytes)) {
            if (p.nextToken() != JsonToken.START_OBJECT) {
                return null;
            }
            String requestId = null, subjectId = null, model = null, eventTime = null;
            Directive.Geo geo = null;
            JsonToken t;
            while ((t = p.nextToken()) == JsonToken.FIELD_NAME) {
                String f = p.currentName();
                JsonToken v = p.nextToken();
                switch (f) {
                    case "request_id" -> requestId = text(p, v);
                    case "subject_id" -> subjectId = text(p, v);
                    case "model" -> model = text(p, v);
                    case "event_time" -> eventTime = text(p, v);
                    case "organization_id" -> {
                        if (v != JsonToken.VALUE_NULL && v != JsonToken.VALUE_STRING) {
                            return null;
                        }
                    }
                    case "geo" -> {
                        if (v == JsonToken.VALUE_NULL) {
                            geo = null;
                        } else if (v != JsonToken.START_OBJECT) {
                            return null;
                        } else {
                            String country = null, subdivision = null, postal = null;
                            JsonToken g;
                            while ((g = p.nextToken()) == JsonToken.FIELD_NAME) {
                                String gf = p.currentName();
                                JsonToken gv = p.nextToken();
                                switch (gf) {
                                    case "country" -> country = optText(p, gv);
                                    case "subdivision" -> subdivision = optText(p, gv);
                                    case "postal_code" -> postal = optText(p, gv);
                                    case "confidence" -> {
                                        if (gv != JsonToken.VALUE_NULL) {
                                            if (!gv.isNumeric()) {
                                                return null;
                                            }
                                            double c = p.getDoubleValue();
                                            if (!(c >= 0.0 && c <= 1.0)) {
                                                return null;
                                            }
                                        }
                                    }
                                    case "vpn", "hosting" -> {
                                        if (!gv.isBoolean()) {
                                            return null;
                                        }
                                    }
                                    default -> p.skipChildren();
                                }
                                if (gf.equals("country") || gf.equals("subdivision") || gf.equals("postal_code")) {
                                    if (gv != JsonToken.VALUE_NULL && gv != JsonToken.VALUE_STRING) {
                                        return null;
                                    }
                                }
                            }
                            if (g != JsonToken.END_OBJECT) {
                                return null;
                            }
                            geo = new Directive.Geo(country, subdivision, postal);
                        }
                    }
                    default -> p.skipChildren();
                }
            }
            if (t != JsonToken.END_OBJECT || p.nextToken() != null) {
                return null;
            }
            if (requestId == null || subjectId == null || model == null || eventTime == null
                    || requestId.isEmpty() || subjectId.isEmpty() || model.isEmpty() || !validEventTime(eventTime)) {
                return null;
            }
            return new Directive.Request(requestId, subjectId, model, geo);
        }
    }

    /** A string value; a marker that fails the request otherwise. */
    private static String text(JsonParser p, JsonToken v) throws java.io.IOException {
        if (v != JsonToken.VALUE_STRING) {
            throw new java.io.IOException("not a string");
        }
        return p.getText();
    }

    private static String optText(JsonParser p, JsonToken v) throws java.io.IOException {
        return v == JsonToken.VALUE_STRING ? p.getText() : null;
    }

    /** The tree decoder: the request, or Malformed with what is wrong. */
    static Directive.Request treeRequest(byte[] bytes) throws Malformed {
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

    /**
     * An RFC 3339 date-time (YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM),
     * T and Z in either case) whose year, as written, is within 2000..=2200.
     */
    static boolean validEventTime(String s) {
        int n = s.length();
        if (n < 20 || !digits(s, 0, 4) || s.charAt(4) != '-' || !digits(s, 5, 7) || s.charAt(7) != '-'
                || !digits(s, 8, 10) || (s.charAt(10) != 'T' && s.charAt(10) != 't') || !digits(s, 11, 13)
                || s.charAt(13) != ':' || !digits(s, 14, 16) || s.charAt(16) != ':' || !digits(s, 17, 19)) {
            return false;
        }
        int year = num(s, 0, 4), month = num(s, 5, 7), day = num(s, 8, 10);
        if (year < 2000 || year > 2200 || month < 1 || month > 12 || day < 1
                || day > java.time.YearMonth.of(year, month).lengthOfMonth()
                || num(s, 11, 13) > 23 || num(s, 14, 16) > 59 || num(s, 17, 19) > 59) {
            return false;
        }
        int i = 19;
        if (s.charAt(i) == '.') {
            int j = i + 1;
            while (j < n && s.charAt(j) >= '0' && s.charAt(j) <= '9') {
                j++;
            }
            if (j == i + 1) {
                return false;
            }
            i = j;
        }
        if (i == n - 1) {
            return s.charAt(i) == 'Z' || s.charAt(i) == 'z';
        }
        return i == n - 6 && (s.charAt(i) == '+' || s.charAt(i) == '-') && digits(s, i + 1, i + 3)
                && s.charAt(i + 3) == ':' && digits(s, i + 4, i + 6) && num(s, i + 1, i + 3) <= 23
                && num(s, i + 4, i + 6) <= 59;
    }

    private static boolean digits(String s, int from, int to) {
        for (int i = from; i < to; i++) {
            char c = s.charAt(i);
            if (c < '0' || c > '9') {
                return false;
            }
        }
        return true;
    }

    private static int num(String s, int from, int to) {
        int v = 0;
        for (int i = from; i < to; i++) {
            v = v * 10 + (s.charAt(i) - '0');
        }
        return v;
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
            Directive.User u = streamUser(bytes, subjectId);
            if (u != null) {
                return u;
            }
        } catch (Exception e) {
            // the tree decoder decides
        }
        return treeUser(bytes, subjectId);
    }

    /** The streaming user decoder: the user, or null (or an exception) when anything is off. */
    static Directive.User streamUser(byte[] bytes, String subjectId) throws java.io.IOException {
        try (JsonParser p = JSON.getFactory().createParser(bytes)) {
            if (p.nextToken() != JsonToken.START_OBJECT) {
                return null;
            }
            boolean isUser = false, idOk = false, versionOk = false, revoked = false;
            Boolean usPerson = null;
            List<Directive.Entry> entries = new ArrayList<>(2);
            List<Directive.Entry> residencies = null;
            JsonToken t;
            while ((t = p.nextToken()) == JsonToken.FIELD_NAME) {
                String f = p.currentName();
                JsonToken v = p.nextToken();
                switch (f) {
                    case "kind" -> isUser = "user".equals(text(p, v));
                    case "id" -> idOk = text(p, v).equals(subjectId);
                    case "version" -> versionOk = v == JsonToken.VALUE_NUMBER_INT
                            && p.getNumberType() != JsonParser.NumberType.BIG_INTEGER && p.getLongValue() >= 0;
                    case "us_person_status" -> {
                        switch (text(p, v)) {
                            case "citizen", "lawful_permanent_resident", "protected_individual" -> usPerson = true;
                            case "foreign_person", "unknown" -> usPerson = false;
                            default -> {
                                return null;
                            }
                        }
                    }
                    case "citizenships", "permanent_residencies" -> {
                        boolean res = f.equals("permanent_residencies");
                        if (v == JsonToken.VALUE_NULL) {
                            break;
                        }
                        if (v != JsonToken.START_ARRAY) {
                            return null;
                        }
                        List<Directive.Entry> into = entries;
                        if (res) {
                            residencies = new ArrayList<>(1);
                            into = residencies;
                        }
                        JsonToken e;
                        while ((e = p.nextToken()) == JsonToken.START_OBJECT) {
                            String country = null, status = null;
                            Object date = null;
                            while (p.nextToken() == JsonToken.FIELD_NAME) {
                                String ef = p.currentName();
                                JsonToken ev = p.nextToken();
                                switch (ef) {
                                    case "country" -> country = text(p, ev);
                                    case "status" -> status = text(p, ev);
                                    case "acquired_on" -> {
                                        date = ev == JsonToken.VALUE_NULL ? null : dateText(text(p, ev));
                                        if (date == BAD) {
                                            return null;
                                        }
                                    }
                                    default -> p.skipChildren();
                                }
                            }
                            if (country == null || (res && status == null)) {
                                return null;
                            }
                            if (res && !status.equals("granted")) {
                                if (!status.equals("pending") && !status.equals("revoked")) {
                                    return null;
                                }
                                continue;
                            }
                            into.add(new Directive.Entry(country, (LocalDate) date));
                        }
                        if (e != JsonToken.END_ARRAY) {
                            return null;
                        }
                    }
                    case "revocation" -> {
                        if (v == JsonToken.VALUE_NULL) {
                            revoked = false;
                            break;
                        }
                        if (v != JsonToken.START_OBJECT) {
                            return null;
                        }
                        boolean at = false;
                        while (p.nextToken() == JsonToken.FIELD_NAME) {
                            String rf = p.currentName();
                            JsonToken rv = p.nextToken();
                            if (rf.equals("revoked_at")) {
                                at = RFC3339.matcher(text(p, rv)).matches();
                            } else {
                                p.skipChildren();
                            }
                        }
                        if (!at) {
                            return null;
                        }
                        revoked = true;
                    }
                    default -> p.skipChildren();
                }
            }
            if (t != JsonToken.END_OBJECT || p.nextToken() != null || !isUser || !idOk || !versionOk
                    || usPerson == null) {
                return null;
            }
            // Citizenships first, then granted residencies, as in the tree decoder.
            if (residencies != null) {
                entries.addAll(residencies);
            }
            return new Directive.User(usPerson, revoked, entries);
        }
    }

    /** The tree user decoder (the reference the streaming one falls back to). */
    static Directive.User treeUser(byte[] bytes, String subjectId) {
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
        return dateText(n.textValue());
    }

    private static Object dateText(String text) {
        String s = Directive.trim(text);
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
