"""I/O at the edges: one client per external API, and the SQLite store."""
