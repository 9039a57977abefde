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

# Values that differ from the defaults in the example: the ones an operator must fill in,
# set to what docker-compose.yml's test server expects.
EXAMPLE_VALUES = {
    "SFTP_HOST": "sftp",
    "SFTP_USER": "ipi",
    "SFTP_DIR": "/upload",
}

# Paths that exist only inside the Compose container: set there by docker-compose.yml
# itself, so that a copy of the example also works for a plain process (which would
# otherwise fail at once on a secret file it does not have).
COMPOSE_VALUES = {
    "SFTP_PASS_FILE": "/run/secrets/sftp_password",
    "SFTP_KNOWN_HOSTS": "/etc/sftp-ipi/known_hosts",
}

HEADER = """\
# sftp-ipi settings. Copy to .env (read from the working directory) or export them;
# the real environment wins over .env. Lines starting with '# NAME=' show a default.
# Fill in SFTP_HOST, SFTP_USER and one way to log in (SFTP_PASS_FILE, SFTP_KEY_FILE, ...);
# the values set below fit the test server of docker-compose.yml.
"""


def render() -> str:
    parts = [HEADER]
    for doc in setting_docs():
        wrapped = textwrap.wrap(doc.doc, width=96)
        lines = [f"# {line}" for line in wrapped]
        if doc.required:
            lines.append("# Required.")
        compose = COMPOSE_VALUES.get(doc.env)
        if compose is not None:
            lines.append(f"# docker-compose.yml sets {compose} (where it mounts it).")
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
