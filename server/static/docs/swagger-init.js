// Starts Swagger UI (vendored swagger-ui-dist, see server/handlers/docs.py) on this server's
// OpenAPI document. The validator badge is off: it would send the document to another host.
"use strict";
window.addEventListener("DOMContentLoaded", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.openapiUrl,
    domNode: root,
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
