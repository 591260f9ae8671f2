"""collect: get a person's one-to-one Telegram chats onto disk as raw JSONL (see docs/data-format.md)."""

from collect.records import MANIFEST_NAME, RawMessage, dialog_path

__all__ = ["MANIFEST_NAME", "RawMessage", "dialog_path"]
