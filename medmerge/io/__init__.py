"""Checkpoint I/O: streaming safetensors reads and writes, atomic directories, content hashes."""
