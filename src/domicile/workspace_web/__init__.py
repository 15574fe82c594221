"""The chat workspace's front door: the JSON API under `/workspace/api/` (Starlette)."""
