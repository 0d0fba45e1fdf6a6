"""Routers: the shared interface (base.py) and forgetless's embedding router (embedding.py)."""
