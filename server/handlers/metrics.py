"""GET /metrics: the front end's Prometheus registry (server/metrics.py), in the text format
(or OpenMetrics when the scraper asks for it in Accept).

With `web_server.metrics` false the route answers the JSON 404 of any unknown path. With
`web_server.api_token` set it needs the token like every other route, unless
`web_server.metrics_public` is true (a scraper on a trusted network then needs no secret).
"""

from __future__ import annotations

from ..errors import ApiError
from .base import BaseHandler


class MetricsHandler(BaseHandler):
    @property
    def public(self) -> bool:  # overrides BaseHandler's class attribute, read in prepare()
        metrics = self.ctx.services.metrics
        return metrics is not None and metrics.public

    def prepare(self) -> None:
        super().prepare()
        if self.ctx.services.metrics is None:
            raise ApiError("not_found", f"no such endpoint: {self.request.path[:100]} "
                           "(web_server.metrics is false)")

    def get(self) -> None:
        body, content_type = self.ctx.services.metrics.exposition(
            self.request.headers.get("Accept"))
        self.set_header("Content-Type", content_type)
        self.finish(body)
