"""/docs (Swagger UI) and /redoc: the API's pages, with their scripts pinned by hash.

FastAPI's own pages load the newest 5.x / 2.x from a CDN with no integrity check, so a
changed or compromised file there would run with this origin's cookies. These name one exact
release and its sha384 (subresource integrity): the browser refuses any other bytes. The
hashes are those of the files in the npm packages, which jsDelivr serves unchanged.
"""

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)

SWAGGER_UI = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5.35.0"
SWAGGER_UI_JS = "sha384-gjRm0bEPMeTmMh5jT2cHccIwCUZSTd8YC+j0d0sXw0MdGEfScduGpSyF3ZSSLkX9"
SWAGGER_UI_CSS = "sha384-WlYgdmXYOOBWL5apwjDEZwN+U3HmXSSu5R6V5aGxEcf7z+KuRNwBhoxKVN1i3D5I"
REDOC = "https://cdn.jsdelivr.net/npm/redoc@2.5.4/bundles/redoc.standalone.js"
REDOC_JS = "sha384-w447zOpYfw/1Tv/5AK9NfHTlQIqE3RVR6KY62jCyy9zNDgO64cMwGGP1Fj0zJVf5"

_SWAGGER_PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>MNIST digit service - Swagger UI</title>
<link rel="stylesheet" href="{SWAGGER_UI}/swagger-ui.css"
      integrity="{SWAGGER_UI_CSS}" crossorigin="anonymous">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{SWAGGER_UI}/swagger-ui-bundle.js"
        integrity="{SWAGGER_UI_JS}" crossorigin="anonymous"></script>
<script>
SwaggerUIBundle({{url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  layout: "BaseLayout", showExtensions: true}});
</script>
</body>
</html>
"""

_REDOC_PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>MNIST digit service - ReDoc</title>
</head>
<body>
<redoc spec-url="/openapi.json"></redoc>
<script src="{REDOC}" integrity="{REDOC_JS}" crossorigin="anonymous"></script>
</body>
</html>
"""


@router.get("/docs")
async def swagger_ui() -> HTMLResponse:
    return HTMLResponse(_SWAGGER_PAGE)


@router.get("/redoc")
async def redoc() -> HTMLResponse:
    return HTMLResponse(_REDOC_PAGE)
