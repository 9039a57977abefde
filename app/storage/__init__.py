"""The local volumes and state: LOCAL_DIR, SERVER_DIR, the record, the ledger, temp files."""
