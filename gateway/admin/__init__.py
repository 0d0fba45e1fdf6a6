"""/admin: swap the router, load and unload adapters at runtime (admin key required)."""
