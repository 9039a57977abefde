"""Print .env.example from the settings' own documentation (``make env-example`` writes it).

A test compares the checked-in file with this output, so the example cannot
drift from the code.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.config import setting_docs

# Values that differ from the defaults in the example: the ones an operator must fill in.
EXAMPLE_VALUES = {
    "SFTP_HOST": "sftp",
    "SFTP_USER": "ipi",
    "SFTP_PASS_FILE": "/run/secrets/sftp_password",
    "SFTP_KNOWN_HOSTS": "/etc/sftp-ipi/known_hosts",
    "SFTP_DIR": "/upload",
}

HEADER = """\
# sftp-ipi settings. Copy to .env (read from the working directory) or export them;
# the real environment wins over .env. Lines starting with '# NAME=' show a default.
"""


def render() -> str:
    parts = [HEADER]
    for doc in setting_docs():
        wrapped = textwrap.wrap(doc.doc, width=96)
        lines = [f"# {line}" for line in wrapped]
        if doc.required:
            lines.append("# Required.")
        value = EXAMPLE_VALUES.get(doc.env)
        if value is not None:
            if doc.default:
                lines.append(f"# Default: {doc.default}")
            lines.append(f"{doc.env}={value}")
        else:
            lines.append(f"# {doc.env}={doc.default}")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


if __name__ == "__main__":
    sys.stdout.write(render())
