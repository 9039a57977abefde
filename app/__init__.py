"""sftp-ipi: a resumable, verified SFTP pull job for IPI files."""

import sys

__version__ = "0.1.0"

# paramiko.config imports invoke, if installed, for ssh_config's "Match exec"
# alone; the job never reads an ssh_config, and invoke (with its vendored YAML)
# was a tenth of every run's start-up. Marked absent, paramiko treats it so.
sys.modules.setdefault("invoke", None)  # type: ignore[arg-type]
