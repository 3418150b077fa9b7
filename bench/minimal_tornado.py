"""The framework's own ceiling for a cache hit (bench/cache_hits.py): the smallest Tornado app
that answers an upload the way any result cache must. It parses the multipart body, hashes the
upload, looks the hash up in a dict and writes the stored bytes; no validation, no limits, no
logging, no metrics.

    .venv/bin/python bench/minimal_tornado.py --port 9000 --image docs/samples/english.jpg \\
        --body body.json
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
from pathlib import Path

import tornado.httputil
import tornado.web


class Hit(tornado.web.RequestHandler):
    def initialize(self, answers: dict[str, bytes]) -> None:
        self.answers = answers

    def post(self) -> None:
        fields: dict = {}
        files: dict = {}
        tornado.httputil.parse_body_arguments(self.request.headers.get("Content-Type", ""),
                                              self.request.body, fields, files)
        body = self.answers.get(hashlib.sha256(files["file"][0]["body"]).hexdigest())
        if body is None:
            raise tornado.web.HTTPError(404)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(body)


async def serve(port: int, answers: dict[str, bytes]) -> None:
    app = tornado.web.Application([("/ocr_service", Hit, {"answers": answers})])
    app.listen(port, "127.0.0.1")
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--body", type=Path, required=True)
    args = parser.parse_args()
    answers = {hashlib.sha256(args.image.read_bytes()).hexdigest(): args.body.read_bytes()}
    asyncio.run(serve(args.port, answers))


if __name__ == "__main__":
    main()
