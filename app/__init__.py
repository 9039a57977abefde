"""sftp-ipi: a resumable, verified SFTP pull job for IPI files."""

__version__ = "0.1.0"
