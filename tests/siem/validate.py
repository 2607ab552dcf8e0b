"""Validates event lines (one JSON object per line) against a pinned schema.

    validate.py ocsf OCSF_SCHEMA_JSON EVENTS_FILE
    validate.py ecs ECS_JSON EVENTS_FILE   ({"version": ..., "fields": <ecs_flat>})

OCSF: each event against the JSON Schema that ocsf-json-schema makes of its class with the
profiles its metadata names (additional properties refused, enums, `at_least_one` constraints),
plus what JSON Schema cannot say: type_uid = class_uid * 100 + activity_id, and each `*_id`'s
caption sibling (class_name, activity_name, severity, action, disposition, status, ...) is the
schema's caption for that id.

ECS: every field is one ECS defines (ecs_flat: the field definitions of the ECS release) with
its type (keyword, long, ip, date, boolean, ...), as an array exactly where ECS normalises it to
one, and one of its allowed values where ECS lists them (event.kind, event.category, event.type,
event.outcome, ...), each event.type expected by one of the event.category values; or a custom
field under `imds_guard.`. `@timestamp` and `ecs.version` are required.

Prints one line per problem, `<line number>: <event code>: <problem>`, and exits 1 if any.
"""

import datetime
import ipaddress
import json
import sys


def ocsf(schema_path, events):
    import jsonschema
    from ocsf_json_schema import OcsfJsonSchemaEmbedded

    with open(schema_path, encoding="utf-8") as f:
        raw = json.load(f)
    schema = OcsfJsonSchemaEmbedded(raw)
    validators = {}
    for n, ev in events:
        code = ev.get("metadata", {}).get("event_code", "?")
        if ev.get("metadata", {}).get("version") != raw["version"]:
            yield n, code, f"metadata.version is not {raw['version']}"
        try:
            name = schema.lookup_class_name_from_uid(class_uid=ev["class_uid"])
        except Exception as e:  # noqa: BLE001 - the validator's own error names the problem
            yield n, code, f"class_uid {ev.get('class_uid')}: {e}"
            continue
        profiles = tuple(sorted(ev["metadata"].get("profiles", [])))
        key = (name, profiles)
        if key not in validators:
            js = schema.get_class_schema(class_name=name, profiles=list(profiles))
            validators[key] = jsonschema.Draft202012Validator(js)
        for err in validators[key].iter_errors(ev):
            path = "/".join(str(p) for p in err.absolute_path)
            yield n, code, f"{path or '(event)'}: {err.message[:300]}"
        cls = raw["classes"][name]
        if ev.get("type_uid") != ev["class_uid"] * 100 + ev.get("activity_id", -1):
            yield n, code, "type_uid is not class_uid * 100 + activity_id"
        if ev.get("class_name") != cls["caption"]:
            yield n, code, f"class_name {ev.get('class_name')!r} is not {cls['caption']!r}"
        category = raw["categories"]["attributes"][cls["category"]]["caption"]
        if ev.get("category_name") != category:
            yield n, code, f"category_name {ev.get('category_name')!r} is not {category!r}"
        yield from captions(n, code, ev, cls["attributes"])


def captions(n, code, ev, attributes):
    """Each `x_id` with an enum: its sibling `x` (or activity_name for activity_id) is the
    caption, except for 99 (Other), where the sibling says what it is."""
    for attr, spec in attributes.items():
        if not attr.endswith("_id") or "enum" not in spec or attr not in ev:
            continue
        value = str(ev[attr])
        if value not in spec["enum"]:
            yield n, code, f"{attr} {value} is not one of the schema's values"
            continue
        sibling = "activity_name" if attr == "activity_id" else attr[: -len("_id")]
        if sibling in ev and value != "99" and ev[sibling] != spec["enum"][value]["caption"]:
            yield n, code, f"{sibling} {ev[sibling]!r} is not the caption of {attr} {value}"


STRINGS = {"keyword", "constant_keyword", "wildcard", "text", "match_only_text"}
INTEGERS = {"long", "integer", "short", "byte", "unsigned_long"}
NUMBERS = {"float", "double", "scaled_float", "half_float"}


def ecs_type_ok(kind, v):
    if kind in STRINGS:
        return isinstance(v, str)
    if kind in INTEGERS:
        return isinstance(v, int) and not isinstance(v, bool)
    if kind in NUMBERS:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if kind == "boolean":
        return isinstance(v, bool)
    if kind == "ip":
        try:
            ipaddress.ip_address(v)
            return True
        except (ValueError, TypeError):
            return False
    if kind == "date":
        try:
            datetime.datetime.fromisoformat(v.replace("Z", "+00:00"))
            return True
        except (ValueError, AttributeError):
            return False
    if kind in {"object", "flattened", "nested"}:
        return isinstance(v, (dict, list))
    return False


def leaves(prefix, value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from leaves(f"{prefix}.{k}" if prefix else k, v)
    else:
        yield prefix, value


def ecs(flat_path, events):
    with open(flat_path, encoding="utf-8") as f:
        doc = json.load(f)
    flat, version = doc["fields"], doc["version"]
    for n, ev in events:
        code = ev.get("event", {}).get("action", "?") if isinstance(ev.get("event"), dict) else "?"
        for required in ("@timestamp", "ecs.version", "event.kind"):
            if not any(k == required for k, _ in leaves("", ev)):
                yield n, code, f"{required} is missing"
        if ev.get("ecs", {}).get("version") != version:
            yield n, code, f"ecs.version is not {version}"
        for key, value in leaves("", ev):
            if key.startswith("imds_guard."):
                continue
            spec = flat.get(key)
            if spec is None:
                yield n, code, f"{key} is not an ECS field (custom fields go under imds_guard.)"
                continue
            is_array = "array" in (spec.get("normalize") or [])
            if isinstance(value, list) != is_array:
                yield n, code, f"{key}: ECS {'expects' if is_array else 'does not expect'} an array"
            for v in value if isinstance(value, list) else [value]:
                if not ecs_type_ok(spec["type"], v):
                    yield n, code, f"{key}: {v!r} is not an ECS {spec['type']}"
                allowed = spec.get("allowed_values")
                if allowed and v not in {a["name"] for a in allowed}:
                    yield n, code, f"{key}: {v!r} is not one of ECS's allowed values"
        yield from ecs_types(n, code, ev.get("event", {}), flat)


def ecs_types(n, code, event, flat):
    """Each event.type must be one the ECS definition of some event.category expects."""
    expected = {a["name"]: set(a.get("expected_event_types", [])) for a in flat["event.category"]["allowed_values"]}
    allowed = set().union(*(expected.get(c, set()) for c in event.get("category", [])))
    for t in event.get("type", []):
        if t not in allowed:
            yield n, code, f"event.type {t!r} is expected by none of event.category {event.get('category')}"


def main():
    kind, schema, path = sys.argv[1:4]
    with open(path, encoding="utf-8") as f:
        events = [(i + 1, json.loads(line)) for i, line in enumerate(f) if line.strip()]
    check = {"ocsf": ocsf, "ecs": ecs}[kind]
    problems = list(check(schema, events))
    for n, code, what in problems:
        print(f"{n}: {code}: {what}")
    print(f"{kind}: {len(events)} events, {len(problems)} problems", file=sys.stderr)
    sys.exit(1 if problems or not events else 0)


if __name__ == "__main__":
    main()
