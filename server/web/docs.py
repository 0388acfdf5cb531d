"""API docs that work offline: Swagger UI at /docs and ReDoc at /redoc, their scripts and styles served
from the copies the fastapi-offline package installs (nothing from a CDN, no web fonts)."""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/web/docs-assets"
# Only this server: ReDoc's bundle, for one, shows its maker's logo from their CDN (a failed request offline).
# Swagger UI's set-up script and both UIs' generated styles are inline.
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
            "object-src 'none'; base-uri 'self'")


def install_docs(app: FastAPI) -> None:
    """Needs an app made with docs_url=None and redoc_url=None (FastAPI's own pages load from a CDN)."""
    app.mount(ASSETS, StaticFiles(directory=str(files("fastapi_offline") / "static")), name="docs-assets")
    favicon = f"{ASSETS}/favicon.png"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        # validatorUrl None: Swagger UI would otherwise send the schema to a public validator for its badge
        page = get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} - API docs",
                                   swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{ASSETS}/swagger-ui.css", swagger_favicon_url=favicon,
                                   swagger_ui_parameters={"validatorUrl": None})
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        page = get_redoc_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} - API reference",
                              redoc_js_url=f"{ASSETS}/redoc.standalone.js", redoc_favicon_url=favicon,
                              with_google_fonts=False)
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page
