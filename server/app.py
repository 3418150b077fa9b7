"""The Tornado application: routes only. Handlers live in handlers/, grouped by resource."""

from __future__ import annotations

import tornado.web

from .handlers.base import AppContext, HttpPolicy, Lifecycle, Services
from .handlers.docs import ApiDocs, DocsFileHandler, DocsPageHandler, OpenApiHandler
from .handlers.jobs import JobCancelHandler, JobHandler, JobResultsHandler, JobsHandler
from .handlers.metrics import MetricsHandler
from .handlers.ocr import OcrServiceHandler, TaskHandler, done_body
from .handlers.ops import HealthHandler, NotFoundHandler, ReadyHandler
from .handlers.web import PageHandler, SettingsHandler, StaticHandler, WebAssets
from .logs import AccessLog


def make_app(context: AppContext, access_log: AccessLog | None = None
             ) -> tornado.web.Application:
    args = {"context": context}
    web = {"context": context, "assets": WebAssets.load()}
    docs = {"context": context, "docs": ApiDocs.load()}
    return tornado.web.Application(
        [
            tornado.web.url(r"/ocr_service/?", OcrServiceHandler, args, name="ocr"),
            tornado.web.url(r"/ocr_service/([^/]+)", TaskHandler, args, name="task"),
            tornado.web.url(r"/jobs/?", JobsHandler, args),
            tornado.web.url(r"/jobs/([^/]+)", JobHandler, args, name="job"),
            tornado.web.url(r"/jobs/([^/]+)/cancel", JobCancelHandler, args, name="job_cancel"),
            tornado.web.url(r"/jobs/([^/]+)/results", JobResultsHandler, args,
                            name="job_results"),
            tornado.web.url(r"/health", HealthHandler, args),
            tornado.web.url(r"/ready", ReadyHandler, args),
            tornado.web.url(r"/metrics", MetricsHandler, args),
            tornado.web.url(r"/", PageHandler, web),
            tornado.web.url(r"/static/([^/]+)", StaticHandler, web),
            tornado.web.url(r"/web/settings", SettingsHandler, args),
            tornado.web.url(r"/openapi\.json", OpenApiHandler, docs, name="openapi"),
            tornado.web.url(r"/docs", DocsPageHandler, docs, name="docs"),
            tornado.web.url(r"/docs/([^/]+)", DocsFileHandler, docs, name="docs_file"),
        ],
        default_handler_class=NotFoundHandler, default_handler_args=args,
        log_function=access_log or AccessLog(),
    )


__all__ = ["AppContext", "HttpPolicy", "Lifecycle", "Services", "done_body", "make_app"]
