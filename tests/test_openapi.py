"""GET /openapi.json and GET /docs over real HTTP: the real app, real worker processes running
the model-free echo handler (tests/echo_worker.py).

The document is checked against what it describes, never against itself: the routes against
the Application's rules and the server's answers to every method, the fields against
server.request's declarations and the server's config, the response shapes against real
responses, the error codes against server.errors.CATALOGUE. The /docs page is checked to load
only this server's own files.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

import jsonschema
import tornado.web
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from server.errors import CATALOGUE
from server.handlers import docs
from server.handlers.docs import PAGE_FILES
from server.request import CONTROL_SPECS, REQUEST_SPECS
from server.testing import multipart
from tests.app_testing import AppTestCase
from tests.echo_worker import echo_text

DEADLINE = 60.0
TOKEN = "docs-token-5d1e"
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
# Not the built-in defaults, so the document must show the server's own.
OVERRIDES = {"ocr.predict_system.det_limit_side_len": 1280,
             "ocr.predict_system.drop_score": 0.4,
             "ocr.predict_system.use_angle_cls": False}
MODELS = ("ppocr-v4", "ppocr-v6-small")
CONTENT_TYPES = {".css": "text/css", ".js": "text/javascript", ".png": "image/png"}


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs
                      if name in ("src", "href", "data-openapi-url") and value]


class DocsTestCase(AppTestCase):
    """The app on Tornado's plain listener (TestDocsNotInstalled patches what get_app builds),
    over echo workers that load MODELS, with the config's defaults changed (OVERRIDES)."""

    echo_models = MODELS
    overrides = OVERRIDES
    hardened = False
    deadline = DEADLINE

    def document(self) -> dict:
        response = self.request("/openapi.json")
        assert response.code == 200, response.body[:300]
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        return json.loads(response.body)

    def validator(self, document: dict, name: str) -> jsonschema.Draft202012Validator:
        """A validator for components.schemas[name], resolving the document's own $refs."""
        schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
        return jsonschema.Draft202012Validator(schema)


def concrete(path: str, parameters: list[dict]) -> str:
    """A URL for a path template, with a value each parameter's schema accepts."""
    for parameter in parameters:
        schema = parameter["schema"]
        if "enum" in schema:
            value = schema["enum"][0]
        elif schema.get("pattern") == "^[0-9a-f]{64}$":
            value = "0" * 64
        else:
            value = "sample"
        path = path.replace("{" + parameter["name"] + "}", urllib.parse.quote(value, safe=""))
    return path


def app_rules(app: tornado.web.Application) -> list[tuple[re.Pattern, set[str]]]:
    """Every rule of the app: its path regex and the methods its handler defines."""
    rules = []
    for rule in app.wildcard_router.rules:
        handler = rule.target
        defined = {method for method in METHODS
                   if getattr(handler, method.lower())
                   is not getattr(tornado.web.RequestHandler, method.lower())}
        rules.append((rule.matcher.regex, defined))
    return rules


class TestDocument(DocsTestCase):
    def test_the_document_is_valid_openapi_3_1_built_once(self):
        response = self.request("/openapi.json")
        document = json.loads(response.body)
        assert document["openapi"] == "3.1.0"
        validate(document)  # raises on any violation of the OpenAPI 3.1 schema
        # The validator is strict enough to notice: a path parameter must be required.
        broken = json.loads(response.body)
        broken["paths"]["/ocr_service/{task_id}"]["get"]["parameters"][0]["required"] = False
        try:
            validate(broken)
        except OpenAPIValidationError:
            pass
        else:
            raise AssertionError("the validator accepted an optional path parameter")
        # The same bytes every time, and revalidated with their ETag.
        again = self.request("/openapi.json")
        assert again.body == response.body
        unchanged = self.request("/openapi.json",
                                 headers={"If-None-Match": response.headers["ETag"]})
        assert unchanged.code == 304

    def test_routes_are_the_apps_both_ways(self):
        document = self.document()
        rules = app_rules(self.app)
        documented: dict[int, str] = {}
        for path, item in document["paths"].items():
            operations = {method.upper(): operation for method, operation in item.items()}
            parameters = next(iter(operations.values())).get("parameters", [])
            url = concrete(path, parameters)
            matching = [index for index, (regex, _) in enumerate(rules)
                        if regex.fullmatch(url)]
            assert matching, f"{path} ({url}) is in the document, not in the app"
            index = matching[0]
            assert index not in documented, (path, documented[index])
            documented[index] = path
            assert set(operations) == rules[index][1], path
            assert all(not operation.get("x-undocumented")
                       for operation in operations.values()), path
            # And the server agrees: documented methods answer, the others are 405.
            for method in METHODS:
                response = self.request(url, method, headers=self.auth)
                if method in operations:
                    assert response.code != 405, (method, url)
                    if method != "HEAD":
                        body = json.loads(response.body) if response.headers.get(
                            "Content-Type", "").startswith("application/json") else {}
                        message = body.get("error", {}).get("message", "")
                        assert not message.startswith("no such endpoint"), (method, url)
                        assert str(response.code) in operations[method]["responses"], (
                            method, url, response.code)
                else:
                    assert response.code == 405, (method, url, response.code)
        assert sorted(documented) == list(range(len(rules))), \
            [rules[index][0].pattern for index in range(len(rules)) if index not in documented]
        # No route outside the document: an unknown path is the JSON 404.
        assert self.request("/no/such/route").code == 404

    def test_request_fields_are_the_declarations_with_the_servers_defaults(self):
        document = self.document()
        operation = document["paths"]["/ocr_service"]["post"]
        content = operation["requestBody"]["content"]
        assert set(content) == {"multipart/form-data", "application/x-www-form-urlencoded",
                                "application/json"}
        names = [spec.name for spec in REQUEST_SPECS]
        policy = self.ctx.requests
        for media_type, body in content.items():
            properties = body["schema"]["properties"]
            expected = names if media_type == "multipart/form-data" else \
                [name for name in names if name != "file"]
            assert list(properties) == expected, media_type
            for spec in REQUEST_SPECS:
                if spec.name not in properties:
                    continue
                schema = properties[spec.name]
                assert schema["type"] == spec.json_type, spec.name
                assert schema.get("minimum") == spec.low, spec.name
                assert schema.get("maximum") == spec.high, spec.name
                assert schema["description"] == spec.description
                if spec in CONTROL_SPECS:
                    default = policy.default_model if spec.name == "model" else spec.default
                else:
                    default = getattr(policy.defaults, spec.name)
                assert schema.get("default") == default, spec.name
                choices = list(MODELS) if spec.name == "model" else spec.choices
                assert schema.get("enum") == (list(choices) if choices else None), spec.name
        # The server's config, not the built-in defaults.
        options = content["application/json"]["schema"]["properties"]
        assert options["det_limit_side_len"]["default"] == 1280
        assert options["drop_score"]["default"] == 0.4
        assert options["use_angle_cls"]["default"] is False
        upload = content["multipart/form-data"]["schema"]["properties"]["file"]
        assert upload == {**upload, "type": "string", "format": "binary"}

    def test_an_upload_as_the_docs_page_sends_it_is_read(self):
        """Swagger UI's Try it out sends every multipart field it shows: at its default, or
        its example (blank for free text), or the first of its choices."""
        document = self.document()
        properties = (document["paths"]["/ocr_service"]["post"]["requestBody"]["content"]
                      ["multipart/form-data"]["schema"]["properties"])
        fields = {}
        for name, schema in properties.items():
            value = schema.get("default", (schema.get("examples") or schema.get("enum")
                                           or [None])[0])
            if value is not None and name != "file":
                fields[name] = value if isinstance(value, str) else json.dumps(value)
        assert (fields["img_src"], fields["filename"], fields["file_type"]) == ("", "", "file")
        image = b"\x89PNG swagger upload"
        body, content_type = multipart(fields, image)
        response = self.request("/ocr_service", "POST", body, {"Content-Type": content_type})
        assert response.code == 200, response.body
        done = json.loads(response.body)
        assert done["text"] == echo_text(image) and done["model"] == MODELS[0]
        self.validator(document, "Done").validate(done)

    def test_response_shapes_are_what_the_server_answers(self):
        document = self.document()
        blocking = self.request("/ocr_service", "POST", json.dumps(
            {"file_type": "base64", "img_src": "aW1hZ2U="}), {"Content-Type": "application/json"})
        assert blocking.code == 200
        self.validator(document, "Done").validate(json.loads(blocking.body))
        pending = self.request("/ocr_service", "POST", urllib.parse.urlencode(
            {"file_type": "base64", "img_src": "cGVuZGluZw==", "block_flag": "false"}),
            {"Content-Type": "application/x-www-form-urlencoded"})
        assert pending.code == 202
        body = json.loads(pending.body)
        self.validator(document, "Pending").validate(body)
        polled = self.request(body["result_url"])
        assert polled.code in (200, 202)
        self.validator(document, "Done" if polled.code == 200 else "Pending").validate(
            json.loads(polled.body))
        refused = self.request("/ocr_service", "POST", json.dumps({"drop_score": 2}),
                               {"Content-Type": "application/json"})
        error = json.loads(refused.body)
        self.validator(document, "Error").validate(error)
        responses = document["paths"]["/ocr_service"]["post"]["responses"]
        assert responses[str(refused.code)] == {"$ref": "#/components/responses/Error400"}
        assert error["error"]["code"] in document["components"]["responses"]["Error400"][
            "x-error-codes"]
        # A failed task answers its error, with its id and "status": "failed".
        failing = json.loads(self.request("/ocr_service", "POST", json.dumps(
            {"file_type": "base64", "img_src": "RkFJTA==", "block_flag": False}),
            {"Content-Type": "application/json"}).body)
        self.wait_task(failing["id"])
        failed = self.request(failing["result_url"])
        body = json.loads(failed.body)
        assert (failed.code, body["status"], body["id"]) == (415, "failed", failing["id"])
        self.validator(document, "Error").validate(body)
        task_responses = document["paths"]["/ocr_service/{task_id}"]["get"]["responses"]
        assert body["error"]["code"] in document["components"]["responses"][
            task_responses["415"]["$ref"].rsplit("/", 1)[1]]["x-error-codes"]
        self.validator(document, "Health").validate(json.loads(self.request("/health").body))
        self.validator(document, "Ready").validate(json.loads(self.request("/ready").body))
        self.validator(document, "WebSettings").validate(
            json.loads(self.request("/web/settings").body))

    def test_every_error_code_with_its_status(self):
        document = self.document()
        components = document["components"]
        by_status: dict[int, list[str]] = {}
        for kind in CATALOGUE.values():
            by_status.setdefault(kind.status, []).append(kind.code)
        errors = {name: response for name, response in components["responses"].items()
                  if name.startswith("Error")}
        assert set(errors) == {f"Error{status}" for status in by_status}
        for status, codes in by_status.items():
            response = errors[f"Error{status}"]
            assert response["x-error-codes"] == codes
            for code in codes:
                assert f"`{code}`: {CATALOGUE[code].description}" in response["description"]
            assert ("Retry-After" in response.get("headers", {})) == any(
                CATALOGUE[code].retry_after is not None for code in codes)
        assert components["schemas"]["ErrorCode"]["enum"] == list(CATALOGUE)
        # Every operation's error responses exist and sit at their codes' status.
        for item in document["paths"].values():
            for operation in item.values():
                for status, response in operation["responses"].items():
                    if "$ref" in response:
                        name = response["$ref"].rsplit("/", 1)[1]
                        assert name == f"Error{status}", (operation["operationId"], status)
        post = document["paths"]["/ocr_service"]["post"]["responses"]
        assert {"200", "202", "400", "403", "404", "413", "415", "500", "503",
                "504"} <= set(post)
        task = document["paths"]["/ocr_service/{task_id}"]["get"]["responses"]
        assert {"200", "202", "404"} <= set(task)

    def test_no_token_configured_means_no_security_required(self):
        document = self.document()
        assert "security" not in document
        assert document["components"]["securitySchemes"]["bearer"] == {
            **document["components"]["securitySchemes"]["bearer"], "type": "http",
            "scheme": "bearer"}
        assert "401" not in document["paths"]["/ocr_service"]["post"]["responses"]


class TestDocumentWithToken(DocsTestCase):
    overrides = {**OVERRIDES, "web_server.api_token": TOKEN}

    def test_the_token_is_a_bearer_scheme_and_public_routes_need_none(self):
        document = self.document()  # fetched without the token: the document is public
        validate(document)
        assert document["security"] == [{"bearer": []}]
        assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        for path, item in document["paths"].items():
            for method, operation in item.items():
                url = concrete(path, operation.get("parameters", []))
                response = self.request(url, method.upper())
                if operation.get("security") == []:
                    assert response.code != 401, (method, path)
                    assert "401" not in operation["responses"], (method, path)
                else:
                    assert response.code == 401, (method, path, response.code)
                    assert operation["responses"]["401"] == {
                        "$ref": "#/components/responses/Error401"}
        public = {path for path, item in document["paths"].items()
                  if item.get("get", {}).get("security") == []}
        assert {"/health", "/openapi.json", "/docs", "/docs/{name}"} <= public
        assert "/ready" not in public and "/ocr_service/{task_id}" not in public


class TestDocsPage(DocsTestCase):
    overrides = {**OVERRIDES, "web_server.api_token": TOKEN}

    def test_the_page_loads_only_this_servers_files(self):
        page = self.request("/docs")
        assert page.code == 200
        assert page.headers["Content-Type"] == "text/html; charset=utf-8"
        html = page.body.decode("utf-8")
        assert "http://" not in html and "https://" not in html
        policy = page.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "connect-src 'self'" in policy
        parser = _References()
        parser.feed(html)
        assert parser.urls, html
        served = set()
        for url in parser.urls:
            parts = urllib.parse.urlsplit(url)
            assert not parts.scheme and not parts.netloc and url.startswith("/"), url
            response = self.request(url)
            assert response.code == 200, (url, response.code)
            name = parts.path.rsplit("/", 1)[1]
            if parts.path == "/openapi.json":
                assert response.headers["Content-Type"].startswith("application/json")
                continue
            assert response.headers["Content-Type"].split(";")[0] == \
                CONTENT_TYPES[Path(name).suffix], url
            assert response.body == PAGE_FILES[name][0].read_bytes()
            assert "immutable" in response.headers["Cache-Control"]  # asked with its ?v=
            served.add(name)
        assert served == set(PAGE_FILES)
        # The page's own script: Swagger UI on this server's document, no outside validator.
        script = PAGE_FILES["swagger-init.js"][0].read_text()
        assert "validatorUrl: null" in script and "http" not in script
        assert "swagger-ui-bundle.js" in html and "swagger-ui.css" in html

    def test_only_the_pages_files_are_served(self):
        for name in ("index.html", "..%2Fdocs.py", "LICENSE", "swagger-ui-es-bundle.js"):
            response = self.request(f"/docs/{name}")
            assert response.code == 404, name
            assert json.loads(response.body)["error"]["code"] == "not_found"
        unversioned = self.request("/docs/swagger-ui.css")
        assert unversioned.code == 200 and unversioned.headers["Cache-Control"] == "no-cache"
        again = self.request("/docs/swagger-ui.css",
                             headers={"If-None-Match": unversioned.headers["ETag"]})
        assert again.code == 304


class TestDocsNotInstalled(DocsTestCase):
    def get_app(self) -> tornado.web.Application:
        original = docs.ApiDocs.load
        docs.ApiDocs.load = classmethod(lambda cls: cls({}, tuple(PAGE_FILES)))
        try:
            return super().get_app()
        finally:
            docs.ApiDocs.load = original

    def test_the_page_says_what_to_install_and_the_api_still_answers(self):
        for path in ("/docs", "/docs/swagger-ui-bundle.js"):
            response = self.request(path)
            assert response.code == 404
            error = json.loads(response.body)["error"]
            assert (error["code"], error["message"]) == ("not_found", docs.NOT_INSTALLED)
        validate(self.document())
        assert self.request("/health").code == 200


def test_missing_page_files_are_recorded_not_fatal(tmp_path, monkeypatch):
    """Without the vendored files the server still starts; /docs then says what to install."""
    monkeypatch.setattr(docs, "PAGE_FILES", {
        "swagger-ui.css": (tmp_path / "absent.css", "text/css"),
        **{name: entry for name, entry in PAGE_FILES.items() if name != "swagger-ui.css"}})
    loaded = docs.ApiDocs.load()
    assert loaded.missing == ("swagger-ui.css",)
    assert set(loaded.files) == set(PAGE_FILES) - {"swagger-ui.css"}
    assert "make" in docs.NOT_INSTALLED and "swagger-ui-dist" in docs.NOT_INSTALLED
