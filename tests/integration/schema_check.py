"""Checks generated profiles against Apple's payload schemas
(../shared/apple-device-management/mdm/profiles/*.yaml): every key must be
known to the schema of its payload, of the right type, and every required key
present."""
import datetime
import os

import yaml

from conftest import SOURCE_DIR

SCHEMAS = os.path.join(SOURCE_DIR, "..", "shared", "apple-device-management", "mdm", "profiles")

TYPES = {
    "<string>": str, "<integer>": int, "<boolean>": bool, "<data>": bytes,
    "<array>": list, "<dictionary>": dict, "<real>": (float, int),
    "<date>": datetime.datetime,
}


def load(name):
    with open(os.path.join(SCHEMAS, name + ".yaml")) as f:
        return yaml.safe_load(f)


def _check_value(path, value, spec, errors):
    t = spec.get("type")
    if t in TYPES:
        want = TYPES[t]
        ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
        if not ok:
            errors.append(f"{path}: expected {t}, got {type(value).__name__}")
            return
    if "rangelist" in spec and isinstance(value, str) and value not in map(str, spec["rangelist"]):
        errors.append(f"{path}: {value!r} not in {spec['rangelist']}")
    sub = spec.get("subkeys")
    if sub and isinstance(value, dict):
        check_dict(path, value, sub, errors)
    elif sub and isinstance(value, list):
        elem = sub[0]
        for i, v in enumerate(value):
            _check_value(f"{path}[{i}]", v, elem, errors)


def check_dict(path, d, keyspecs, errors, extra_known=()):
    by_name = {k["key"]: k for k in keyspecs}
    for k, v in d.items():
        if k in extra_known:
            continue
        spec = by_name.get(k)
        if spec is None:
            if "ANY" in by_name:
                continue
            errors.append(f"{path}.{k}: not a key of the schema")
            continue
        _check_value(f"{path}.{k}", v, spec, errors)
    for k, spec in by_name.items():
        if spec.get("presence") == "required" and k not in d and k != "ANY":
            errors.append(f"{path}: required key {k} missing")


def check_profile(profile):
    """Returns a list of problems (empty when the profile matches). Skips
    the calling test when the schemas are not beside the project."""
    if not os.path.isdir(SCHEMAS):
        import pytest
        pytest.skip(f"Apple's schemas are not at {SCHEMAS}")
    errors = []
    top = load("TopLevel")
    check_dict("TopLevel", profile, top["payloadkeys"], errors)
    common = load("CommonPayloadKeys")["payloadkeys"]
    by_type = {}
    for name in os.listdir(SCHEMAS):
        if name.endswith(".yaml"):
            y = load(name[:-5])
            pt = (y.get("payload") or {}).get("payloadtype")
            if pt:
                by_type[pt] = y
    for i, p in enumerate(profile.get("PayloadContent", [])):
        schema = by_type.get(p.get("PayloadType"))
        if schema is None:
            errors.append(f"PayloadContent[{i}]: unknown PayloadType {p.get('PayloadType')}")
            continue
        keys = list(schema["payloadkeys"])
        names = {k["key"] for k in keys}
        keys += [c for c in common if c["key"] not in names]
        check_dict(f"{p['PayloadType']}", p, keys, errors)
    return errors
