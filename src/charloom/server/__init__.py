"""The HTTP generation API and the web playground (extra `serve`: FastAPI and uvicorn)."""

from .app import create_app, serve

__all__ = ["create_app", "serve"]
