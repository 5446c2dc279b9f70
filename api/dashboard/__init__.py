"""The dashboard: pages the API serves itself (pages.py), from the files in `static/`."""
