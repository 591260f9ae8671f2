"""prepare: raw chat JSONL → instruction records, secrets scrubbed; owns the one prompt format."""
