"""GET /health (the process answers), GET /ready (workers loaded and answering), and the JSON
404 for every other path."""

from __future__ import annotations

from ..errors import ApiError
from .base import BaseHandler


class HealthHandler(BaseHandler):
    public = True

    def get(self) -> None:
        self.send_json({"status": "ok"})


class ReadyHandler(BaseHandler):
    def get(self) -> None:
        services, lifecycle = self.ctx.services, self.ctx.lifecycle
        stats = services.pool.stats()
        ready = stats["ready"] > 0 and not lifecycle.draining
        self.send_json({"status": "ready" if ready else "not_ready",
                        "draining": lifecycle.draining, "workers": stats["ready"],
                        "size": stats["size"], "busy": stats["busy"], "queued": stats["queued"],
                        "queued_background": stats["queued_background"],
                        **self._backend(), **services.ocr.stats()},
                       status=200 if ready else 503)

    def _backend(self) -> dict:
        # The workers' backend and how it was chosen ("measurement" for backend auto); absent
        # for a pool whose spec is not an engine's (the tests' echo workers).
        choice = getattr(self.ctx.services.pool.spec, "backend_choice", None)
        return {"backend": choice} if choice else {}


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        super().prepare()
        raise ApiError("not_found", f"no such endpoint: {self.request.path[:100]}")
