"""The Tornado application: routes only. Handlers live in handlers/, grouped by resource."""

from __future__ import annotations

import tornado.web

from .handlers.base import AppContext, HttpPolicy, Lifecycle, Services
from .handlers.ocr import OcrServiceHandler, TaskHandler, done_body
from .handlers.ops import HealthHandler, NotFoundHandler, ReadyHandler
from .logs import AccessLog


def make_app(context: AppContext, access_log: AccessLog | None = None
             ) -> tornado.web.Application:
    args = {"context": context}
    return tornado.web.Application(
        [
            tornado.web.url(r"/ocr_service/?", OcrServiceHandler, args, name="ocr"),
            tornado.web.url(r"/ocr_service/([^/]+)", TaskHandler, args, name="task"),
            tornado.web.url(r"/health", HealthHandler, args),
            tornado.web.url(r"/ready", ReadyHandler, args),
        ],
        default_handler_class=NotFoundHandler, default_handler_args=args,
        log_function=access_log or AccessLog(),
    )


__all__ = ["AppContext", "HttpPolicy", "Lifecycle", "Services", "done_body", "make_app"]
