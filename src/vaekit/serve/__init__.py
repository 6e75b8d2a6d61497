"""``vaekit serve``: a trained model over HTTP (a FastAPI app) and a web page to explore its latent space.

The web framework is an optional dependency (``pip install 'vaekit[serve]'``): it is imported only when
``create_app`` is first used, so the rest of vaekit works without it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from vaekit.serve.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
