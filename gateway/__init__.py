"""The ASGI gateway: HTTP and websocket endpoints, sessions, turn routing and merging."""
