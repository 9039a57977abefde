"""What the job tells people and machines: logs, progress, the run report, status, metrics, alerts."""
