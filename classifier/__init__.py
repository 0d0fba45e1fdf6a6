"""forgetless embedding router: reads a request's text and names the route (adapter) it belongs to."""

from classifier.errors import InputError
from classifier.routers.base import Decision, Router
from classifier.routers.embedding import EmbeddingRouter

__all__ = ["Decision", "EmbeddingRouter", "InputError", "Router"]
