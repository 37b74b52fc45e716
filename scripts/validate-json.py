#!/usr/bin/env python3
"""Validate ferry's JSON output against its schema (docs/schema/).

    validate-json.py SCHEMA FILE [--lines] [--min N]

FILE holds one JSON value, or with --lines one a line (lines that do not
begin with '{' are skipped: log lines beside progress samples). At least
--min values must be there. Exit status 0 when every value is valid.
"""
import json
import sys

import jsonschema


def main():
    args = sys.argv[1:]
    lines = "--lines" in args
    minimum = 1
    if "--min" in args:
        minimum = int(args[args.index("--min") + 1])
    schema_path, path = [a for a in args if not a.startswith("--")
                         and not a.isdigit()][:2]
    with open(schema_path) as f:
        schema = json.load(f)
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    with open(path) as f:
        text = f.read()
    values = ([json.loads(l) for l in text.splitlines() if l.startswith("{")]
              if lines else [json.loads(text)])
    bad = 0
    for i, v in enumerate(values):
        for e in validator.iter_errors(v):
            print(f"{path}: value {i}: {e.message} at {list(e.path)}")
            bad += 1
    if len(values) < minimum:
        print(f"{path}: {len(values)} values, expected at least {minimum}")
        bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
