#!/usr/bin/env python3
"""Generate the JSON Schemas of clearance's wire documents.

    python3 schemas/generate.py          # (re)write schemas/*.schema.json
    python3 schemas/generate.py --check  # exit 1 if a file is out of date

The source of truth is src/event.rs (the serde types). This script mirrors it:
one definition per Rust type, and every schema file is self-contained (it
carries copies of the definitions it uses under `$defs`), so a validator needs
no cross-file `$ref` resolution. When event.rs changes, change the matching
definition here and regenerate; tests/it/schemas.rs checks that the examples
in schemas/examples/ validate and deserialize into the Rust types.

Mapping rules:
- a field without `#[serde(default)]` that is not an `Option` is `required`;
- an `Option<T>` field may be absent or null;
- `additionalProperties` is left open: readers ignore unknown fields;
- enums are the snake_case variant names;
- RFC 3339 timestamps are `format: date-time`, days are `YYYY-MM-DD`.
"""

import json
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
DIALECT = "https://json-schema.org/draft/2020-12/schema"
ID_BASE = "urn:clearance:schema:"


def ref(name):
    return {"$ref": f"#/$defs/{name}"}


def nullable(schema):
    """An `Option<T>` field: T or null."""
    if "$ref" in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    out = dict(schema)
    t = out["type"]
    out["type"] = (t if isinstance(t, list) else [t]) + ["null"]
    return out


def desc(text, schema):
    out = {"description": text}
    out.update(schema)
    return out


def obj(description, properties, required, deps=()):
    """An object definition. `deps` names the other definitions it uses."""
    return {
        "schema": {
            "type": "object",
            "description": description,
            "properties": properties,
            "required": list(required),
        },
        "deps": list(deps),
    }


STRING = {"type": "string"}
NON_EMPTY = {"type": "string", "minLength": 1}
U64 = {"type": "integer", "minimum": 0, "maximum": 18446744073709551615}
DATE_TIME = {"type": "string", "format": "date-time"}
DATE = {
    "type": "string",
    "format": "date",
    "pattern": "^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$",
}

# ---------------------------------------------------------------------------
# Definitions, one per Rust type of src/event.rs.
# ---------------------------------------------------------------------------

DEFS = {}

DEFS["CountryCode"] = {
    "schema": {
        "type": "string",
        "description": 'An ISO 3166-1 alpha-2 country code, upper case ("US", "CN").',
        "pattern": "^[A-Z]{2}$",
    },
    "deps": [],
}

DEFS["Date"] = {
    "schema": desc("A calendar day, YYYY-MM-DD.", DATE),
    "deps": [],
}

DEFS["Relationship"] = {
    "schema": {
        "type": "string",
        "description": "Relationship of a user to their organization.",
        "enum": ["employee", "contractor", "visitor", "other"],
    },
    "deps": [],
}

# --- Access request ---------------------------------------------------------

DEFS["Geolocation"] = obj(
    "The geolocation of a request.",
    {
        "country": nullable(desc("Country of the request's origin.", ref("CountryCode"))),
        "subdivision": nullable(
            desc(
                'ISO 3166-2 subdivision ("UA-43" for Crimea).',
                {"type": "string", "pattern": "^[A-Z]{2}-[A-Z0-9]{1,3}$"},
            )
        ),
        "postal_code": nullable(desc("Postal code, when known.", STRING)),
        "confidence": nullable(
            desc(
                "Confidence of the geolocation, 0.0 to 1.0.",
                {"type": "number", "minimum": 0, "maximum": 1},
            )
        ),
        "vpn": desc("The address belongs to a known VPN. Default false.", {"type": "boolean", "default": False}),
        "hosting": desc(
            "The address belongs to a hosting provider. Default false.",
            {"type": "boolean", "default": False},
        ),
    },
    [],
    deps=["CountryCode"],
)

DEFS["AccessRequest"] = obj(
    "A request to use a model, as published by an API frontend on "
    "`access.requests`. The record key is the subject id (so one subject's "
    "requests stay in order); the value is this document as JSON.",
    {
        "request_id": desc(
            "Unique id of the request, chosen by the frontend. The engine decides every "
            "record and does not deduplicate: a request_id produced twice gets two "
            "decisions, one per record, which may differ (each is decided with the data "
            "and policy of its own moment). Retry with the same request_id and "
            "event_time, and take the latest decision for the id.",
            NON_EMPTY,
        ),
        "event_time": desc(
            "When the frontend received the request (RFC 3339). The policy is "
            'evaluated "as of" this instant, which keeps decisions replayable. '
            "The engine rejects years outside 2000..=2200.",
            DATE_TIME,
        ),
        "subject_id": desc("The user making the request.", NON_EMPTY),
        "organization_id": nullable(desc("The organization the user acts for, if any.", STRING)),
        "model": desc('The model id requested ("fable-5").', NON_EMPTY),
        "geo": nullable(
            desc(
                "Where the request comes from, as far as the frontend could tell.",
                ref("Geolocation"),
            )
        ),
    },
    ["request_id", "event_time", "subject_id", "model"],
    deps=["Geolocation"],
)

# --- Eligibility records ----------------------------------------------------

DEFS["UsPersonStatus"] = {
    "schema": {
        "type": "string",
        "description": "U.S. person status (deemed-export rule, 15 CFR 734.13 and "
        "8 U.S.C. 1324b). citizen, lawful_permanent_resident (green card granted) "
        "and protected_individual (refugee or asylee) are U.S. persons; "
        "foreign_person covers visa holders and pending applications; unknown: "
        "not established.",
        "enum": [
            "citizen",
            "lawful_permanent_resident",
            "protected_individual",
            "foreign_person",
            "unknown",
        ],
    },
    "deps": [],
}

DEFS["Citizenship"] = obj(
    "A citizenship, with the date it was acquired.",
    {
        "country": desc("Country of citizenship.", ref("CountryCode")),
        "acquired_on": nullable(desc("When it was acquired (YYYY-MM-DD), if known.", ref("Date"))),
    },
    ["country"],
    deps=["CountryCode", "Date"],
)

DEFS["ResidencyStatus"] = {
    "schema": {
        "type": "string",
        "description": "Status of a permanent residency: granted; pending (applied "
        "for, not granted: does not count); revoked (or abandoned).",
        "enum": ["granted", "pending", "revoked"],
    },
    "deps": [],
}

DEFS["PermanentResidency"] = obj(
    "A permanent residency (in any country, including the U.S.).",
    {
        "country": desc("Country of residency.", ref("CountryCode")),
        "status": desc("Status of the residency.", ref("ResidencyStatus")),
        "acquired_on": nullable(desc("When it was granted (YYYY-MM-DD), if known.", ref("Date"))),
    },
    ["country", "status"],
    deps=["CountryCode", "ResidencyStatus", "Date"],
)

DEFS["VerificationStatus"] = {
    "schema": {
        "type": "string",
        "description": "Identity verification status: verified (and, unless "
        "expires_at has passed, current), pending, failed, expired.",
        "enum": ["verified", "pending", "failed", "expired"],
    },
    "deps": [],
}

DEFS["Verification"] = obj(
    "Identity verification of a user.",
    {
        "status": desc("Status.", ref("VerificationStatus")),
        "verified_at": nullable(desc("When the verification was done (RFC 3339).", DATE_TIME)),
        "expires_at": nullable(
            desc("When the verification stops being valid (RFC 3339).", DATE_TIME)
        ),
    },
    ["status"],
    deps=["VerificationStatus"],
)

DEFS["Revocation"] = obj(
    "A revocation of a subject's access, published by the compliance team. "
    "It takes effect on arrival.",
    {
        "revoked_at": desc("When the access was revoked (RFC 3339).", DATE_TIME),
        "reason": nullable(desc("Free-text reason, for the record.", STRING)),
    },
    ["revoked_at"],
)

DEFS["UserRecord"] = obj(
    "The eligibility data of one user.",
    {
        "id": desc("User id (the request's subject_id).", NON_EMPTY),
        "version": desc(
            "Per-key version; an older version never replaces a newer one.", U64
        ),
        "updated_at": nullable(desc("When this version was written (RFC 3339).", DATE_TIME)),
        "us_person_status": desc("U.S. person status.", ref("UsPersonStatus")),
        "citizenships": desc(
            "Citizenships, with their dates. Default empty.",
            {"type": "array", "items": ref("Citizenship"), "default": []},
        ),
        "permanent_residencies": desc(
            "Permanent residencies, with their dates and status. Default empty.",
            {"type": "array", "items": ref("PermanentResidency"), "default": []},
        ),
        "organization_id": nullable(desc("The organization the user belongs to.", STRING)),
        "relationship": nullable(desc("Relationship to that organization.", ref("Relationship"))),
        "verification": nullable(desc("Identity verification.", ref("Verification"))),
        "revocation": nullable(
            desc("Set when the subject's access has been revoked.", ref("Revocation"))
        ),
    },
    ["id", "version", "us_person_status"],
    deps=[
        "UsPersonStatus",
        "Citizenship",
        "PermanentResidency",
        "Relationship",
        "Verification",
        "Revocation",
    ],
)

DEFS["OwnerKind"] = {
    "schema": {
        "type": "string",
        "description": "What kind of party an owner is: organization (its own record, "
        "organization:<id>, is followed when the store has it, and a missing record is "
        "missing data) or person (never looked up).",
        "enum": ["organization", "person"],
    },
    "deps": [],
}

DEFS["Owner"] = obj(
    "A direct owner of an organization, with its share.",
    {
        "id": desc(
            "Owner id: an organization id (the key of its own record) or a person.", STRING
        ),
        "kind": nullable(
            desc(
                "Organization or person. When absent, the owner is followed if the store "
                "has an organization record with this id, and otherwise judged by "
                "headquarters alone.",
                ref("OwnerKind"),
            )
        ),
        "headquarters": nullable(
            desc(
                "Where the owner is headquartered (or of which country a person is). The "
                "owner's own record, when followed, takes precedence.",
                ref("CountryCode"),
            )
        ),
        "percent": desc(
            "Direct share of ownership, in percent (0-100). Indirect ownership is computed "
            "by following owner records (OFAC's 50% rule), not entered here.",
            {"type": "number", "minimum": 0, "maximum": 100},
        ),
    },
    ["id", "percent"],
    deps=["CountryCode", "OwnerKind"],
)

DEFS["ScreeningStatus"] = {
    "schema": {
        "type": "string",
        "description": "Status of a restricted-party screening hit: confirmed (the "
        "party is listed), potential (unresolved: needs human review), cleared "
        "(reviewed and found to be a false positive).",
        "enum": ["confirmed", "potential", "cleared"],
    },
    "deps": [],
}

DEFS["ScreeningHit"] = obj(
    "A restricted-party screening hit (Entity List, SDN, Unverified List, MEU).",
    {
        "list": desc(
            'The list ("entity_list", "sdn", "unverified_list", "meu").',
            {"type": "string", "examples": ["entity_list", "sdn", "unverified_list", "meu"]},
        ),
        "status": desc("Confirmed, potential or cleared.", ref("ScreeningStatus")),
        "entry": nullable(desc("The list entry matched, if known.", STRING)),
    },
    ["list", "status"],
    deps=["ScreeningStatus"],
)

DEFS["Authorization"] = obj(
    "A license, license exception or government authorization held by an "
    "organization.",
    {
        "id": desc("Authorization id (license number).", STRING),
        "legal_basis": nullable(desc('The legal basis it is granted under ("EAR 734.13").', STRING)),
        "model_tags": desc(
            "Model tags it covers. Default empty.",
            {"type": "array", "items": STRING, "default": []},
        ),
        "nationalities": desc(
            "Nationalities it covers (empty: any).",
            {"type": "array", "items": ref("CountryCode"), "default": []},
        ),
        "subjects": desc(
            "Subjects it covers (empty: any member of the organization).",
            {"type": "array", "items": STRING, "default": []},
        ),
        "relationships": desc(
            "Relationships it covers (empty: any).",
            {"type": "array", "items": ref("Relationship"), "default": []},
        ),
        "valid_from": desc(
            "First day of validity (YYYY-MM-DD, inclusive). Required: a record with a "
            "missing or unreadable date is dead-lettered.",
            ref("Date"),
        ),
        "valid_until": desc(
            "Last day of validity (YYYY-MM-DD, inclusive, not before valid_from). Required.",
            ref("Date"),
        ),
    },
    ["id", "valid_from", "valid_until"],
    deps=["CountryCode", "Relationship", "Date"],
)

DEFS["OrgRecord"] = obj(
    "The eligibility data of one organization.",
    {
        "id": desc("Organization id.", NON_EMPTY),
        "version": desc(
            "Per-key version; an older version never replaces a newer one.", U64
        ),
        "updated_at": nullable(desc("When this version was written (RFC 3339).", DATE_TIME)),
        "name": nullable(desc("Display name.", STRING)),
        "headquarters": nullable(desc("Country of the headquarters.", ref("CountryCode"))),
        "owners": desc(
            "Owners with their (direct plus indirect) percentages. Default empty.",
            {"type": "array", "items": ref("Owner"), "default": []},
        ),
        "screening_hits": desc(
            "Restricted-party screening hits. Default empty.",
            {"type": "array", "items": ref("ScreeningHit"), "default": []},
        ),
        "authorizations": desc(
            "Authorizations held. Default empty.",
            {"type": "array", "items": ref("Authorization"), "default": []},
        ),
    },
    ["id", "version"],
    deps=["CountryCode", "Owner", "ScreeningHit", "Authorization"],
)


def tagged(kind, target, description):
    return {
        "schema": {
            "description": description,
            "allOf": [ref(target)],
            "properties": {"kind": {"const": kind}},
            "required": ["kind"],
        },
        "deps": [target],
    }


DEFS["UserEligibilityRecord"] = tagged(
    "user", "UserRecord", 'A user record: kind "user", keyed `user:<id>`.'
)
DEFS["OrganizationEligibilityRecord"] = tagged(
    "organization",
    "OrgRecord",
    'An organization record: kind "organization", keyed `organization:<id>`.',
)

# --- Decision ---------------------------------------------------------------

DEFS["Outcome"] = {
    "schema": {"type": "string", "description": "Allow or deny.", "enum": ["allow", "deny"]},
    "deps": [],
}

DEFS["RecordVersion"] = obj(
    "The version of one eligibility record a decision used.",
    {"id": desc("Record id.", STRING), "version": desc("Record version.", U64)},
    ["id", "version"],
)

DEFS["Versions"] = obj(
    "The versions a decision was made with.",
    {
        "policy_id": desc("Policy id.", STRING),
        "policy_version": desc("Policy version.", STRING),
        "data_version": desc(
            "Version of the country lists and tables the policy carries.", STRING
        ),
        "policy_digest": desc(
            "SHA-256 (lower-case hex) of the policy text the decision was made with: "
            "replay takes the text of (policy_id, policy_version) from the policy "
            "history and checks it has this digest. Empty only in decisions recorded "
            "before digests were.",
            {"type": "string", "pattern": "^([0-9a-f]{64}(\\+.*)?)?$"},
        ),
        "subject": nullable(
            desc("The subject record used, if there was one.", ref("RecordVersion"))
        ),
        "organization": nullable(
            desc("The organization record used, if there was one.", ref("RecordVersion"))
        ),
        "owners": desc(
            "The owner organizations' records followed for ownership (the chain above "
            "organization), in the order they were read. Absent when none.",
            {"type": "array", "items": ref("RecordVersion"), "default": []},
        ),
    },
    ["policy_id", "policy_version", "data_version"],
    deps=["RecordVersion"],
)

DEFS["DecisionInputs"] = obj(
    "The exact inputs of a decision: enough to decide again without the change "
    "feed's history.",
    {
        "request": desc("The request, as decoded.", ref("AccessRequest")),
        "subject": nullable(
            desc("The subject's eligibility record at decision time.", ref("UserRecord"))
        ),
        "organization": nullable(
            desc("The organization's eligibility record at decision time.", ref("OrgRecord"))
        ),
        "owners": desc(
            "The owner organizations' records followed for ownership, as in "
            "versions.owners: replay decides from these alone. Absent when none.",
            {"type": "array", "items": ref("OrgRecord"), "default": []},
        ),
    },
    ["request"],
    deps=["AccessRequest", "UserRecord", "OrgRecord"],
)

DEFS["SourceCoordinates"] = obj(
    "Where a record came from in Kafka.",
    {
        "topic": desc("Topic.", NON_EMPTY),
        "partition": desc("Partition.", {"type": "integer", "minimum": 0, "maximum": 2147483647}),
        "offset": desc(
            "Offset.", {"type": "integer", "minimum": 0, "maximum": 9223372036854775807}
        ),
    },
    ["topic", "partition", "offset"],
)

DEFS["Decision"] = obj(
    "An allow or deny decision, published on `access.decisions` keyed by "
    "request_id.",
    {
        "request_id": desc("The request decided.", STRING),
        "outcome": desc("Allow or deny.", ref("Outcome")),
        "reasons": desc(
            "Stable reason codes (snake_case, e.g. restricted_nationality, "
            "sanctioned_location, unknown_subject, us_person), most important first.",
            {"type": "array", "items": STRING},
        ),
        "rule_ids": desc(
            "Ids of the policy rules that matched.", {"type": "array", "items": STRING}
        ),
        "legal_basis": desc(
            "Legal bases of the rules that matched. Default empty.",
            {"type": "array", "items": STRING, "default": []},
        ),
        "obligations": desc(
            'Obligations attached to a deny ("reverify", "manual_review"). Default empty.',
            {
                "type": "array",
                "items": {"type": "string", "examples": ["reverify", "manual_review"]},
                "default": [],
            },
        ),
        "versions": desc("Versions of the policy and records used.", ref("Versions")),
        "inputs": nullable(
            desc("The exact inputs; null only for malformed requests.", ref("DecisionInputs"))
        ),
        "decided_at": desc("When the engine decided (RFC 3339).", DATE_TIME),
        "source": nullable(desc("Where the request was read from.", ref("SourceCoordinates"))),
        "engine_instance": desc(
            "The engine instance that decided. Default empty.", {"type": "string", "default": ""}
        ),
    },
    ["request_id", "outcome", "reasons", "rule_ids", "versions", "decided_at"],
    deps=["Outcome", "Versions", "DecisionInputs", "SourceCoordinates"],
)

# --- Dead letter ------------------------------------------------------------

DEFS["DeadLetter"] = obj(
    "A record that could not be processed, published on `access.deadletter`.",
    {
        "error_kind": desc(
            'Stable error code ("empty", "too_large", "not_utf8", "invalid_json", '
            '"invalid_document", "missing_field", "invalid_field", ...).',
            {
                "type": "string",
                "examples": [
                    "empty",
                    "too_large",
                    "not_utf8",
                    "invalid_json",
                    "invalid_document",
                    "missing_field",
                    "invalid_field",
                ],
            },
        ),
        "error": desc("Human-readable error.", STRING),
        "source": desc("Where the record was read from.", ref("SourceCoordinates")),
        "key": nullable(
            desc("The record key, lossily decoded as UTF-8, if there was one.", STRING)
        ),
        "payload_base64": desc(
            "The original bytes, base64 (standard alphabet, padded), truncated to "
            "the configured limit.",
            {
                "type": "string",
                "contentEncoding": "base64",
                "pattern": "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
            },
        ),
        "payload_size": desc(
            "Size of the original payload in bytes.", {"type": "integer", "minimum": 0}
        ),
        "truncated": desc(
            "Whether payload_base64 holds fewer bytes than the original.", {"type": "boolean"}
        ),
        "request_id": nullable(desc("The request id, if one could be read.", STRING)),
        "at": desc("When the engine dead-lettered it (RFC 3339).", DATE_TIME),
    },
    ["error_kind", "error", "source", "payload_base64", "payload_size", "truncated", "at"],
    deps=["SourceCoordinates"],
)

# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------

FILES = {
    "access-request": {
        "title": "clearance access request",
        "root": "AccessRequest",
        "extra_description": "Rust type: clearance::event::AccessRequest.",
    },
    "eligibility-record": {
        "title": "clearance eligibility record",
        "root": None,
        "description": "A value of the compacted `eligibility.changes` topic: a user or an "
        "organization, told apart by `kind`. The record key is `user:<id>` or "
        "`organization:<id>` and must match the document's kind and id. A null "
        "Kafka value (no document at all) is a tombstone: it deletes the key's "
        "record. Per key, a record with an older `version` never replaces a newer "
        "one. Rust type: clearance::event::EligibilityRecord.",
        "oneOf": ["UserEligibilityRecord", "OrganizationEligibilityRecord"],
    },
    "decision": {
        "title": "clearance decision",
        "root": "Decision",
        "extra_description": "Rust type: clearance::event::Decision.",
    },
    "dead-letter": {
        "title": "clearance dead letter",
        "root": "DeadLetter",
        "extra_description": "Rust type: clearance::event::DeadLetter.",
    },
}


def closure(names):
    seen, stack = [], list(names)
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.append(n)
        stack.extend(DEFS[n]["deps"])
    return sorted(seen)


def build(name, spec):
    out = {
        "$schema": DIALECT,
        "$id": f"{ID_BASE}{name}",
        "title": spec["title"],
    }
    if spec["root"]:
        root = DEFS[spec["root"]]["schema"]
        out["description"] = root["description"] + " " + spec["extra_description"]
        out["type"] = "object"
        out["properties"] = root["properties"]
        out["required"] = root["required"]
        defs = closure(DEFS[spec["root"]]["deps"])
    else:
        out["description"] = spec["description"]
        out["type"] = "object"
        out["properties"] = {
            "kind": {
                "description": "Which record this is.",
                "enum": ["user", "organization"],
            }
        }
        out["required"] = ["kind"]
        out["oneOf"] = [ref(n) for n in spec["oneOf"]]
        defs = closure(spec["oneOf"])
    out["$defs"] = {n: DEFS[n]["schema"] for n in defs}
    return json.dumps(out, indent=2, ensure_ascii=False) + "\n"


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    for name, spec in FILES.items():
        path = HERE / f"{name}.schema.json"
        text = build(name, spec)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(HERE.parent)}")
    if stale:
        print("out of date (run python3 schemas/generate.py): " + ", ".join(stale))
        sys.exit(1)


if __name__ == "__main__":
    main()
