#!/usr/bin/env python3
"""Check that every crate in the build is under a licence the project accepts.

Reads `cargo metadata --format-version 1` on stdin; exits 1 naming each package whose licence
expression cannot be satisfied from ALLOWED (an `OR` needs one allowed side, an `AND` needs
both, `WITH` exceptions are kept with their licence). Why not cargo-deny: its advisory database
is fetched from GitHub, which CI cannot reach, and building it costs minutes in every CI run; the
licence half is this script.
"""
import json
import re
import sys

ALLOWED = {
    "MIT", "Apache-2.0", "Apache-2.0 WITH LLVM-exception", "BSD-2-Clause", "BSD-3-Clause",
    "ISC", "Zlib", "Unicode-3.0", "Unicode-DFS-2016", "Unlicense", "0BSD", "BSL-1.0", "CC0-1.0",
}


def tokens(expr):
    # Old crates write "MIT/Apache-2.0" for "MIT OR Apache-2.0".
    expr = expr.replace("/", " OR ")
    return re.findall(r"\(|\)|[A-Za-z0-9.\-+]+", expr)


def satisfiable(toks):
    """Parse OR of ANDs of (terms | parenthesised expressions); True if allowed."""
    pos = 0

    def term():
        nonlocal pos
        if toks[pos] == "(":
            pos += 1
            v = disj()
            pos += 1  # ")"
            return v
        lic = toks[pos]
        pos += 1
        if pos < len(toks) and toks[pos] == "WITH":
            lic = f"{lic} WITH {toks[pos + 1]}"
            pos += 2
        return lic in ALLOWED

    def conj():
        nonlocal pos
        v = term()
        while pos < len(toks) and toks[pos] == "AND":
            pos += 1
            v = term() and v
        return v

    def disj():
        nonlocal pos
        v = conj()
        while pos < len(toks) and toks[pos] == "OR":
            pos += 1
            v = conj() or v
        return v

    return disj()


def main():
    meta = json.load(sys.stdin)
    bad = []
    for p in meta["packages"]:
        if p.get("source") is None:
            continue  # the workspace's own crates
        lic = p.get("license")
        if not lic:
            bad.append(f"{p['name']} {p['version']}: no licence expression")
        elif not satisfiable(tokens(lic)):
            bad.append(f"{p['name']} {p['version']}: {lic}")
    for b in bad:
        print(f"licence not accepted: {b}", file=sys.stderr)
    print(f"licences: {len(meta['packages'])} packages checked, {len(bad)} not accepted")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
