"""GET /: the web page to draw or upload a digit; its assets under /static.

The page ships inside the package and talks to the same /predict and /summary as every
other client, so it needs no code path of its own on the server.
"""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(include_in_schema=False)
# Mounted on the router so that registering the router is all the app factory does.
router.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


# Everything the page needs comes from here, and nothing inline: an injected script or
# style has nowhere to run, and no other site may frame the page (clickjacking).
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
}


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)
