"""The regional gateway: server, app, proxy, router, health, state."""
