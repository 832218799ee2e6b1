"""``python -m forkproxy.config``: print or write the generated docs, or
check a file and print its effective configuration."""

from __future__ import annotations

import os
import sys

from forkproxy.config.docs import man_keys, sample, splice_man
from forkproxy.config.render import dump
from forkproxy.config.loader import load
from forkproxy.errors import EX_CONFIG, EX_OK, EX_USAGE, ConfigErrors


def main(argv: list[str]) -> int:
    usage = "usage: python -m forkproxy.config (--man | --sample | --write-docs ROOT | FILE)"
    if len(argv) == 1 and argv[0] == "--man":
        sys.stdout.write(man_keys())
        return EX_OK
    if len(argv) == 1 and argv[0] == "--sample":
        sys.stdout.write(sample())
        return EX_OK
    if len(argv) == 2 and argv[0] == "--write-docs":
        man = os.path.join(argv[1], "man", "forkproxy.toml.5")
        with open(man, encoding="utf-8") as f:
            page = splice_man(f.read())
        with open(man, "w", encoding="utf-8") as f:
            f.write(page)
        with open(os.path.join(argv[1], "conf", "forkproxy.toml"), "w", encoding="utf-8") as f:
            f.write(sample())
        return EX_OK
    if len(argv) == 1 and not argv[0].startswith("-"):
        try:
            cfg = load(argv[0])
        except ConfigErrors as e:
            print(e, file=sys.stderr)
            return EX_CONFIG
        sys.stdout.write(dump(cfg))
        return EX_OK
    print(usage, file=sys.stderr)
    return EX_USAGE


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
