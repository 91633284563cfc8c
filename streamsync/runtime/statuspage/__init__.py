"""The read-only status page on the health bind: `/` (server-rendered, refreshed by the small
script in static/) and `/status.json` (data.py builds it, render.py draws it)."""
