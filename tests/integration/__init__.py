"""Integration tests: the real server, real sockets, real clients."""
