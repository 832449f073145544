package dev.clearance.peer;

import java.time.LocalDate;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * The example directive's core, exactly what benches/cedar/directive_core.toml
 * encodes, decided as clearance's src/decide.rs decides it, in plain Java.
 *
 * <p>Rules, in policy order (deny reasons keep this order, without duplicates):
 * <ol>
 *   <li>ofac-sanctioned-location, deny, scope all, on_missing_data = skip:
 *       the request's country (or its subdivision's country) is CU, IR or KP,
 *       or it lies in Crimea (UA-43, UA-40, or a UA postal code starting
 *       95..99), the DNR (UA-14) or the LNR (UA-09);</li>
 *   <li>subject-known, deny, tagged models: no subject record;</li>
 *   <li>subject-revoked, deny, scope all: the record carries a revocation;</li>
 *   <li>deemed-export-nationality, deny, tagged models: a foreign person whose
 *       derived country (nationality_mode most_recent) is in D:5 or MO; a
 *       missing subject denies as unknown_subject, an undetermined nationality
 *       as nationality_unknown;</li>
 *   <li>us-person, allow, tagged models;</li>
 *   <li>nationality-not-restricted, allow, tagged models: every derived
 *       country known and outside D:5 + MO.</li>
 * </ol>
 * A model outside the catalog is denied (unknown_model) with only the
 * scope-all rules evaluated besides; an untagged catalog model with no allow
 * rule is allowed (default_allow_untagged: unrestricted_model); anything else
 * without an allow rule is denied (no_allow_rule).
 */
public final class Directive {
    private Directive() {}

    static final String TAG = "order-2026-11";

    /** The catalog: model id to "controlled" (tagged with order-2026-11). */
    static final Map<String, Boolean> MODELS = Map.of(
            "fable-5", true,
            "mythos-5", true,
            "haiku-4", false,
            "sonnet-4", false,
            "opus-4", false);

    static final Set<String> SANCTIONED = Set.of("CU", "IR", "KP");

    static final Set<String> D5_OR_MACAU = Set.of(
            "AF", "BY", "MM", "CF", "CN", "CD", "CU", "ER", "HT", "IR", "IQ", "LB",
            "LY", "NI", "KP", "RU", "SO", "SS", "SD", "SY", "VE", "ZW", "MO");

    /** A region: its country, wholly covered subdivisions, postal prefixes. */
    record Region(String country, List<String> subdivisions, List<String> postalPrefixes) {}

    static final List<Region> REGIONS = List.of(
            new Region("UA", List.of("UA-43", "UA-40"), List.of("95", "96", "97", "98", "99")),
            new Region("UA", List.of("UA-14"), List.of()),
            new Region("UA", List.of("UA-09"), List.of()));

    // Reason codes (src/vocab.rs).
    static final String UNKNOWN_MODEL = "unknown_model";
    static final String SANCTIONED_LOCATION = "sanctioned_location";
    static final String UNKNOWN_SUBJECT = "unknown_subject";
    static final String SUBJECT_REVOKED = "subject_revoked";
    static final String RESTRICTED_NATIONALITY = "restricted_nationality";
    static final String NATIONALITY_UNKNOWN = "nationality_unknown";
    static final String US_PERSON = "us_person";
    static final String NATIONALITY_NOT_RESTRICTED = "nationality_not_restricted";
    static final String UNRESTRICTED_MODEL = "unrestricted_model";
    static final String NO_ALLOW_RULE = "no_allow_rule";
    static final String MALFORMED_REQUEST = "malformed_request";

    /** A decoded access request: only what the directive reads. */
    record Request(String requestId, String subjectId, String model, Geo geo) {}

    /** The request's geolocation (null fields: absent). */
    record Geo(String country, String subdivision, String postalCode) {}

    /** A citizenship or granted permanent residency: country as recorded, date or null. */
    record Entry(String country, LocalDate acquiredOn) {}

    /** A subject's record: only what the directive reads. */
    record User(boolean usPerson, boolean revoked, List<Entry> entries) {}

    /** The verdict: outcome and reasons. */
    record Verdict(boolean allow, List<String> reasons) {}

    /** Decide a request given its subject's record (null: no record). */
    public static Verdict decide(Request req, User subject) {
        Boolean controlledBox = MODELS.get(req.model());
        boolean known = controlledBox != null;
        boolean controlled = known && controlledBox;
        List<String> denies = new ArrayList<>(2);
        List<String> allows = new ArrayList<>(1);
        if (!known) {
            denies.add(UNKNOWN_MODEL);
        }
        // 1. ofac-sanctioned-location (scope all; missing data skipped).
        if (locationSanctioned(req.geo())) {
            add(denies, SANCTIONED_LOCATION);
        }
        // 2. subject-known (tagged).
        if (controlled && subject == null) {
            add(denies, UNKNOWN_SUBJECT);
        }
        // 3. subject-revoked (scope all).
        if (subject != null && subject.revoked()) {
            add(denies, SUBJECT_REVOKED);
        }
        List<String> countries = null;
        if (controlled) {
            // 4. deemed-export-nationality.
            if (subject == null) {
                add(denies, UNKNOWN_SUBJECT);
            } else if (!subject.usPerson()) {
                countries = derivedCountries(subject);
                boolean restricted = false;
                boolean unknown = countries.isEmpty();
                for (String c : countries) {
                    if (c == null) {
                        unknown = true;
                    } else if (D5_OR_MACAU.contains(c)) {
                        restricted = true;
                    }
                }
                if (restricted) {
                    add(denies, RESTRICTED_NATIONALITY);
                } else if (unknown) {
                    add(denies, NATIONALITY_UNKNOWN);
                }
            }
            // 5. us-person.
            if (subject != null && subject.usPerson()) {
                allows.add(US_PERSON);
            }
            // 6. nationality-not-restricted.
            if (subject != null && !subject.usPerson()) {
                boolean all = !countries.isEmpty();
                for (String c : countries) {
                    if (c == null || D5_OR_MACAU.contains(c)) {
                        all = false;
                    }
                }
                if (all) {
                    allows.add(NATIONALITY_NOT_RESTRICTED);
                }
            }
        }
        if (!denies.isEmpty()) {
            return new Verdict(false, denies);
        }
        if (allows.isEmpty()) {
            if (known && !controlled) {
                return new Verdict(true, List.of(UNRESTRICTED_MODEL));
            }
            return new Verdict(false, List.of(NO_ALLOW_RULE));
        }
        return new Verdict(true, allows);
    }

    private static void add(List<String> v, String s) {
        if (!v.contains(s)) {
            v.add(s);
        }
    }

    /**
     * The derived countries under nationality_mode most_recent: among the
     * citizenships and granted permanent residencies, those with the latest
     * acquired_on, plus every one without a date (fail closed), upper case,
     * without duplicates; null for an entry that is not a two-letter code.
     */
    static List<String> derivedCountries(User u) {
        LocalDate latest = null;
        for (Entry e : u.entries()) {
            if (e.acquiredOn() != null && (latest == null || e.acquiredOn().isAfter(latest))) {
                latest = e.acquiredOn();
            }
        }
        List<String> out = new ArrayList<>(2);
        boolean hasNull = false;
        for (Entry e : u.entries()) {
            if (e.acquiredOn() == null || e.acquiredOn().equals(latest)) {
                String c = candidate(e.country());
                if (c == null) {
                    if (!hasNull) {
                        hasNull = true;
                        out.add(null);
                    }
                } else if (!out.contains(c)) {
                    out.add(c);
                }
            }
        }
        return out;
    }

    /** Two ASCII letters after trimming, upper-cased; otherwise null. */
    static String candidate(String code) {
        String t = trim(code);
        if (t.length() == 2 && asciiLetter(t.charAt(0)) && asciiLetter(t.charAt(1))) {
            return t.toUpperCase(java.util.Locale.ROOT);
        }
        return null;
    }

    static boolean asciiLetter(char c) {
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
    }

    /** Rust's str::trim: strips Unicode White_Space at both ends. */
    static String trim(String s) {
        int a = 0;
        int b = s.length();
        while (a < b && white(s.charAt(a))) {
            a++;
        }
        while (b > a && white(s.charAt(b - 1))) {
            b--;
        }
        return s.substring(a, b);
    }

    private static boolean white(char c) {
        return Character.isWhitespace(c) || Character.isSpaceChar(c) || c == '\u0085';
    }

    /** Whether a code is in a set of upper-case codes, case-insensitively (two ASCII letters only). */
    static boolean inSet(Set<String> set, String code) {
        if (code == null || code.length() != 2 || !asciiLetter(code.charAt(0)) || !asciiLetter(code.charAt(1))) {
            return false;
        }
        return set.contains(code.toUpperCase(java.util.Locale.ROOT));
    }

    /** The first two characters when both are ASCII (Rust's str.get(..2) then a code check), else null. */
    static String prefix2(String s) {
        if (s.length() < 2 || s.charAt(0) > 0x7f || s.charAt(1) > 0x7f) {
            return null;
        }
        return s.substring(0, 2);
    }

    /** ofac-sanctioned-location: true when it fires (missing data: false, since it is skipped). */
    static boolean locationSanctioned(Geo g) {
        if (g == null) {
            return false;
        }
        String country = g.country() == null ? null : trim(g.country());
        if (country != null && country.isEmpty()) {
            country = null;
        }
        if (inSet(SANCTIONED, country)) {
            return true;
        }
        for (Region r : REGIONS) {
            if (inRegion(g, country, r)) {
                return true;
            }
        }
        if (g.subdivision() != null && inSet(SANCTIONED, prefix2(trim(g.subdivision())))) {
            return true;
        }
        // No region has partial subdivisions: region_undetermined cannot
        // happen; a missing country is missing data, skipped.
        return false;
    }

    static boolean inRegion(Geo g, String country, Region r) {
        String sub = g.subdivision() == null ? null : trim(g.subdivision());
        if (sub != null && sub.isEmpty()) {
            sub = null;
        }
        if (sub != null) {
            for (String s : r.subdivisions()) {
                if (s.equalsIgnoreCase(sub) && isAscii(sub)) {
                    return true;
                }
            }
        }
        String c = country != null ? country : (sub == null ? null : prefix2(sub));
        if (c != null && c.equalsIgnoreCase(r.country()) && isAscii(c)) {
            String pc = usablePostalCode(g.postalCode(), r);
            if (pc != null) {
                for (String p : r.postalPrefixes()) {
                    if (pc.startsWith(p)) {
                        return true;
                    }
                }
            }
        }
        return false;
    }

    private static boolean isAscii(String s) {
        for (int i = 0; i < s.length(); i++) {
            if (s.charAt(i) > 0x7f) {
                return false;
            }
        }
        return true;
    }

    /** Region::usable_postal_code for a region with prefixes only. */
    static String usablePostalCode(String code, Region r) {
        if (code == null || r.postalPrefixes().isEmpty()) {
            return null;
        }
        String t = trim(code);
        StringBuilder out = new StringBuilder(t.length());
        for (int i = 0; i < t.length(); i++) {
            char c = t.charAt(i);
            if (c == ' ' || c == '-') {
                continue;
            }
            if ((c >= '0' && c <= '9') || asciiLetter(c)) {
                out.append(Character.toUpperCase(c));
            } else {
                return null;
            }
        }
        int longest = 0;
        for (String p : r.postalPrefixes()) {
            longest = Math.max(longest, p.length());
        }
        return out.length() >= longest && out.length() > 0 ? out.toString() : null;
    }
}
