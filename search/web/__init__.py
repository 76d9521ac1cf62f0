"""The search page: static files served by search/http_api.py (no build step, nothing from the internet)."""
