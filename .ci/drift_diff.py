"""Print the packages of ``pip freeze`` (stdin) whose version differs from the constraints file."""

import sys
from pathlib import Path


def pins(lines):
    out = {}
    for line in lines:
        name, sep, version = line.strip().partition("==")
        if sep and not name.startswith("#"):
            out[name.lower().replace("_", "-")] = version
    return out


tested = pins(Path(sys.argv[1]).read_text().splitlines())
installed = pins(sys.stdin)
diff = [f"  {n}=={v} (tested {tested[n]})" for n, v in sorted(installed.items())
        if n in tested and tested[n] != v]  # fmt: skip
print("\n".join(diff) or "  (none: every constrained package at its tested version)")
