"""The test suite's second database: ``testapp.Poster`` lives there, everything else in default."""

from __future__ import annotations


class PosterRouter:
    def _route(self, model) -> str | None:
        return "other" if model._meta.label_lower == "testapp.poster" else None

    def db_for_read(self, model, **hints):
        return self._route(model)

    def db_for_write(self, model, **hints):
        return self._route(model)

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        if app_label == "testapp" and model_name == "poster":
            return db == "other"
        return db == "default"
