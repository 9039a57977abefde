"""Talking to the SFTP server: connecting, host keys, listing, reading, proving, acting on remote files."""
