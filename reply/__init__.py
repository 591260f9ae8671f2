"""`reply`: answer your Telegram chats with your twin — drafts to approve, auto-replies only where allowed."""
