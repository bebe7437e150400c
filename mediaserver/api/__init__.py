"""The gateway: REST and WebSocket under /v1 (FastAPI), and the pages it serves."""
