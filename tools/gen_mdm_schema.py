#!/usr/bin/env python3
"""Generates core/mdm/cmdschema_data.c, the C table of every MDM command's
keys and types, from Apple's YAML schemas (apple/device-management,
mdm/commands/*.yaml).

    python3 tools/gen_mdm_schema.py                  # write the default output
    python3 tools/gen_mdm_schema.py --out FILE       # write FILE
    python3 tools/gen_mdm_schema.py --check FILE     # exit 1 if FILE is stale

--yaml DIR names the schema directory (default: the shared copy beside the
source tree). The output depends only on the YAML contents, never on paths,
time or dictionary order, so that --check can compare it byte for byte.

Exit codes: 0 success, 1 stale file or bad schema, 2 usage error, 77 the YAML
directory is missing (ctest reports that as a skip, as the schemas live
outside the repository).
"""

import argparse
import difflib
import os
import re
import sys

SKIP = 77

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_YAML = os.path.join(ROOT, "..", "shared", "apple-device-management", "mdm", "commands")
DEFAULT_OUT = os.path.join(ROOT, "core", "mdm", "cmdschema_data.c")
REGEN = ("python3 tools/gen_mdm_schema.py "
         "--yaml ../shared/apple-device-management/mdm/commands "
         "--out core/mdm/cmdschema_data.c")

TYPES = {
    "<string>": "MDM_T_STRING",
    "<integer>": "MDM_T_INTEGER",
    "<real>": "MDM_T_REAL",
    "<boolean>": "MDM_T_BOOLEAN",
    "<date>": "MDM_T_DATE",
    "<data>": "MDM_T_DATA",
    "<array>": "MDM_T_ARRAY",
    "<dictionary>": "MDM_T_DICT",
    "<any>": "MDM_T_ANY",
}

OS_BITS = [
    ("iOS", "MDM_OS_IOS"),
    ("macOS", "MDM_OS_MACOS"),
    ("tvOS", "MDM_OS_TVOS"),
    ("visionOS", "MDM_OS_VISIONOS"),
    ("watchOS", "MDM_OS_WATCHOS"),
]
SHARED_IPAD = "MDM_OS_SHARED_IPAD"


class SchemaError(Exception):
    pass


def c_string(s):
    """A C string literal for s (UTF-8 bytes; '?' escaped against trigraphs)."""
    out = ['"']
    for b in s.encode("utf-8"):
        c = chr(b)
        if c in '"\\?':
            out.append("\\" + c)
        elif 0x20 <= b < 0x7F:
            out.append(c)
        else:
            out.append("\\%03o" % b)
    out.append('"')
    return "".join(out)


def value_text(v):
    """The string form of a rangelist value (YAML may give ints or bools)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def ident(s):
    """A C identifier fragment for s."""
    return re.sub(r"[^A-Za-z0-9]+", "_", s).strip("_") or "x"


class Emitter:
    """Collects static C definitions, children before parents, with unique
    names derived from the key paths."""

    def __init__(self):
        self.lines = []
        self.names = set()

    def name(self, prefix, path):
        base = prefix + "_" + ident(path)
        n, i = base, 2
        while n in self.names:
            n = "%s_%d" % (base, i)
            i += 1
        self.names.add(n)
        return n

    def values(self, path, vals):
        n = self.name("v", path)
        head = "static const char *const %s[] = {" % n
        items = [c_string(v) for v in vals]
        one = head + ", ".join(items) + "};"
        if len(one) <= 100:
            self.lines.append(one)
            return n
        # Long lists: several values a line, lines of at most 100 columns.
        self.lines.append(head)
        line = "   "
        for it in items:
            if len(line) + len(it) + 2 > 100:
                self.lines.append(line)
                line = "   "
            line += " " + it + ","
        self.lines.append(line)
        self.lines.append("};")
        return n

    def keys(self, path, entries):
        n = self.name("k", path)
        self.lines.append("static const mdm_schema_key_t %s[] = {" % n)
        for e in entries:
            self.lines.append("    {" + e + "},")
        self.lines.append("};")
        return n


def discriminator(forms):
    """For an array whose elements may take several dictionary forms, the
    member every form requires as a string with a single allowed value,
    distinct per form (Settings uses `Item`); None if there is none."""
    if len(forms) < 2 or any(f.get("type") != "<dictionary>" for f in forms):
        return None
    for cand in forms[0].get("subkeys") or []:
        name = cand.get("key")
        seen = set()
        ok = True
        for f in forms:
            m = [k for k in f.get("subkeys") or [] if k.get("key") == name]
            if (len(m) != 1 or m[0].get("type") != "<string>"
                    or m[0].get("presence") != "required"
                    or len(m[0].get("rangelist") or []) != 1):
                ok = False
                break
            v = value_text(m[0]["rangelist"][0])
            if v in seen:
                ok = False
                break
            seen.add(v)
        if ok:
            return name
    return None


def key_entry(em, k, path, depth, fname):
    """Emits what key k needs and returns its initializer text."""
    if depth > 24:
        raise SchemaError("%s: %s: nesting deeper than 24" % (fname, path))
    if not isinstance(k, dict) or "key" not in k or "type" not in k:
        raise SchemaError("%s: %s: key entry without key/type" % (fname, path))
    name = str(k["key"])
    typ = k["type"]
    if typ not in TYPES:
        raise SchemaError("%s: %s.%s: unknown type %r" % (fname, path, name, typ))
    kpath = path + "." + name
    fields = [".name = " + c_string(name), ".type = " + TYPES[typ]]
    flags = []
    if k.get("presence") == "required":
        flags.append("MDM_SKF_REQUIRED")
    if name == "ANY":
        flags.append("MDM_SKF_WILDCARD")
    subs = k.get("subkeys") or []
    vals = [value_text(v) for v in (k.get("rangelist") or [])]
    if subs and typ not in ("<array>", "<dictionary>"):
        # A scalar with subkeys lists the known values of an array element
        # (DeviceInformation's query names). Apple's devices ignore names
        # they do not know, so these are advisory, not enforced.
        vals = vals or [str(s["key"]) for s in subs]
        flags.append("MDM_SKF_VALUES_ADVISORY")
        subs = []
    if flags:
        fields.append(".flags = " + " | ".join(flags))
    if vals:
        fields.append(".values = " + em.values(kpath, vals))
        fields.append(".nvalues = %d" % len(vals))
    if subs:
        # Element forms of an array live under "Path[]"; dictionary members
        # under "Path". The paths only name the emitted C arrays.
        spath = kpath + "[]" if typ == "<array>" else kpath
        entries = [key_entry(em, s, spath, depth + 1, fname) for s in subs]
        fields.append(".sub = " + em.keys(kpath, entries))
        fields.append(".nsub = %d" % len(entries))
        if typ == "<array>":
            d = discriminator(subs)
            if d is not None:
                fields.append(".discriminator = " + c_string(d))
    return ", ".join(fields)


def channels(so):
    """(os, device_os, user_os) bit lists from a payload's supportedOS."""
    os_bits, dev, usr = [], [], []
    for osname, bit in OS_BITS:
        v = so.get(osname)
        if not isinstance(v, dict) or v.get("introduced") == "n/a":
            continue
        d = v.get("devicechannel") is not False
        u = v.get("userchannel") is True
        si = v.get("sharedipad") if osname == "iOS" else None
        mode = si.get("mode") if isinstance(si, dict) else None
        if mode != "required":
            os_bits.append(bit)
            if d:
                dev.append(bit)
            if u:
                usr.append(bit)
        if isinstance(si, dict) and mode != "forbidden":
            os_bits.append(SHARED_IPAD)
            if si.get("devicechannel", d) is not False:
                dev.append(SHARED_IPAD)
            if si.get("userchannel", False) is True:
                usr.append(SHARED_IPAD)
    return os_bits, dev, usr


def bits(lst):
    return " | ".join(lst) if lst else "0"


def load(yaml_dir):
    try:
        import yaml
    except ImportError:
        raise SchemaError("python3-yaml is missing (scripts/deps.sh --test installs it)")
    files = sorted(f for f in os.listdir(yaml_dir) if f.endswith(".yaml"))
    if not files:
        raise SchemaError("%s: no .yaml files" % yaml_dir)
    cmds, skipped, seen = [], [], {}
    for f in files:
        with open(os.path.join(yaml_dir, f), "rb") as fh:
            doc = yaml.safe_load(fh)
        payload = doc.get("payload") if isinstance(doc, dict) else None
        rt = payload.get("requesttype") if isinstance(payload, dict) else None
        if not isinstance(rt, str) or not rt:
            skipped.append(f)
            continue
        if rt in seen:
            # Two files for one RequestType cannot be merged safely by a
            # program; a person must decide which describes the wire.
            raise SchemaError("RequestType %s is in both %s and %s" % (rt, seen[rt], f))
        seen[rt] = f
        cmds.append((rt, f, doc))
    cmds.sort(key=lambda c: c[0].encode("utf-8"))
    return files, cmds, skipped


def generate(yaml_dir):
    files, cmds, skipped = load(yaml_dir)
    em = Emitter()
    rows = []
    for rt, f, doc in cmds:
        keys = doc.get("payloadkeys") or []
        kname = None
        if keys:
            kname = em.keys(rt, [key_entry(em, k, rt, 1, f) for k in keys])
        resp = [str(k["key"]) for k in (doc.get("responsekeys") or [])
                if isinstance(k, dict) and "key" in k]
        rname = em.values(rt + "_response", resp) if resp else None
        so = doc["payload"].get("supportedOS")
        if isinstance(so, dict) and so:
            os_bits, dev, usr = channels(so)
            dch = "true" if dev else "false"
            uch = "true" if usr else "false"
        else:
            # Without supportedOS nothing restricts the channel.
            os_bits, dev, usr, dch, uch = [], [], [], "true", "true"
        fields = [
            ".request_type = " + c_string(rt),
            ".file = " + c_string(f),
            ".os = " + bits(sorted(set(os_bits), key=os_order)),
            ".device_os = " + bits(sorted(set(dev), key=os_order)),
            ".user_os = " + bits(sorted(set(usr), key=os_order)),
            ".device_channel = " + dch,
            ".user_channel = " + uch,
        ]
        if kname:
            fields.append(".keys = %s, .nkeys = %d" % (kname, len(keys)))
        if rname:
            fields.append(".response_keys = %s, .nresponse_keys = %d" % (rname, len(resp)))
        rows.append("    {\n        " + ",\n        ".join(fields) + ",\n    },")

    out = []
    out.append("/* GENERATED FILE: do not edit by hand.")
    out.append(" *")
    out.append(" * Made by tools/gen_mdm_schema.py from Apple's MDM command schemas")
    out.append(" * (apple/device-management, the YAML files of mdm/commands): %d files, %d commands."
               % (len(files), len(cmds)))
    if skipped:
        out.append(" * Skipped (no payload.requesttype): %s." % ", ".join(skipped))
    out.append(" * To regenerate, from the source directory:")
    out.append(" *   " + REGEN)
    out.append(" * ctest's schema/fresh test fails when this file does not match the YAML. */")
    out.append('#include "mdm/cmdschema.h"')
    out.append("")
    out.append("#include <stdbool.h>")
    out.append("#include <stddef.h>")
    out.append("")
    out.extend(em.lines)
    out.append("")
    out.append("/* Sorted by RequestType (strcmp order) for binary search. */")
    out.append("const mdm_cmd_schema_t mdm__cmd_schemas[] = {")
    out.extend(rows)
    out.append("};")
    out.append("")
    out.append("const size_t mdm__cmd_schema_count = %d;" % len(cmds))
    out.append("")
    return "\n".join(out), len(files), len(cmds), skipped


def os_order(b):
    order = [b for _, b in OS_BITS] + [SHARED_IPAD]
    return order.index(b)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--yaml", default=DEFAULT_YAML, help="directory of mdm/commands/*.yaml")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--out", help="file to write (default core/mdm/cmdschema_data.c)")
    g.add_argument("--check", metavar="FILE", help="compare FILE with what would be generated")
    a = ap.parse_args()

    if not os.path.isdir(a.yaml):
        print("gen_mdm_schema: YAML directory %s not found; skipping" % a.yaml, file=sys.stderr)
        return SKIP
    try:
        text, nfiles, ncmds, skipped = generate(a.yaml)
    except (SchemaError, OSError) as e:
        print("gen_mdm_schema: %s" % e, file=sys.stderr)
        return 1
    except Exception as e:  # A YAML syntax error, or a shape we never saw.
        print("gen_mdm_schema: cannot read the schemas: %s: %s" % (type(e).__name__, e),
              file=sys.stderr)
        return 1
    for f in skipped:
        print("gen_mdm_schema: warning: %s has no payload.requesttype; skipped" % f,
              file=sys.stderr)

    if a.check:
        try:
            with open(a.check, "r", encoding="utf-8", newline="") as fh:
                have = fh.read()
        except OSError as e:
            print("gen_mdm_schema: %s" % e, file=sys.stderr)
            return 1
        if have != text:
            print("gen_mdm_schema: %s is stale: it does not match the YAML in %s.\n"
                  "Regenerate it with:\n  %s" % (a.check, a.yaml, REGEN), file=sys.stderr)
            diff = list(difflib.unified_diff(have.splitlines(), text.splitlines(),
                                             a.check, "generated", lineterm="", n=1))
            for line in diff[:40]:
                print(line, file=sys.stderr)
            if len(diff) > 40:
                print("... (%d more diff lines)" % (len(diff) - 40), file=sys.stderr)
            return 1
        print("gen_mdm_schema: %s is up to date (%d commands from %d files)"
              % (a.check, ncmds, nfiles))
        return 0

    out = a.out or DEFAULT_OUT
    tmp = out + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    os.replace(tmp, out)
    print("gen_mdm_schema: wrote %s (%d commands from %d files)" % (out, ncmds, nfiles))
    return 0


if __name__ == "__main__":
    sys.exit(main())
