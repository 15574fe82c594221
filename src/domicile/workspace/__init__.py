"""The chat workspace's services: conversations, files, knowledge, GPTs, chat, retention."""
