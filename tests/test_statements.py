"""The hand-built INSERTs of the hot paths must store exactly what the ORM would:
``statements.insert_new`` (a new job: its defaults written into the statement, the instance
built from the row) and ``statements.insert_row`` (a webhook delivery)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.forms.models import model_to_dict
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from imagekit_bgremove.models import (
    JobStatus,
    RemovalJob,
    WebhookDelivery,
    owner_content_type,
)
from tests.testapp.models import Document, Product

pytestmark = pytest.mark.django_db


def _stored(model, pk) -> dict:
    row = model._base_manager.filter(pk=pk).values().get()
    row.pop("id")
    return row


def _job_values(**extra) -> dict:
    now = timezone.now()
    return {
        "content_type": owner_content_type(Product, "photo"),
        "object_id": "7",
        "field_name": "photo",
        "status": JobStatus.QUEUED,
        "options": {"add_shadow": True, "bg_color": None},
        "force": False,
        "trigger": "save",
        "source_name": "products/a.jpg",
        "error_code": "",
        "error_message": "",
        "created_at": now,
        "updated_at": now,
        "finished_at": None,
        **extra,
    }


def test_a_new_job_is_stored_as_the_orm_stores_it():
    user = get_user_model().objects.create(username="staff")
    values = _job_values(requested_by=user, status=JobStatus.FAILED, error_code="x")
    by_orm = RemovalJob.objects.create(**values)
    by_statement = RemovalJob.objects.insert(**{**values, "object_id": "8"})
    expected = {**_stored(RemovalJob, by_orm.pk), "object_id": "8"}
    assert _stored(RemovalJob, by_statement.pk) == expected
    # The returned instance is the stored row, saved, with what it was given cached.
    assert by_statement.pk and not by_statement._state.adding
    assert model_to_dict(by_statement) == model_to_dict(RemovalJob.objects.get(pk=by_statement.pk))
    with CaptureQueriesContext(connection) as queries:
        assert by_statement.requested_by == user
        assert by_statement.content_type.model == "product"
        assert by_statement.retry_of is None
    assert not queries.captured_queries


def test_a_new_job_takes_the_id_it_is_given():
    taken = RemovalJob.objects.create(**_job_values(object_id="1"))
    job = RemovalJob.objects.insert(id=taken.pk + 100, **_job_values(object_id="2"))
    assert job.pk == taken.pk + 100
    assert RemovalJob.objects.get(pk=job.pk).object_id == "2"


def test_one_statement_per_new_job():
    with CaptureQueriesContext(connection) as queries:
        RemovalJob.objects.insert(**_job_values())
    assert len(queries.captured_queries) == 1
    assert queries.captured_queries[0]["sql"].startswith("INSERT")


def test_a_delivery_with_empty_and_null_values_is_stored_as_the_orm_stores_it():
    job = RemovalJob.objects.create(
        **_job_values(content_type=owner_content_type(Document, "scan"))
    )
    now = timezone.now()
    common = {"received_at": now, "body": "", "headers": {}, "job": job, "remote_addr": None}
    by_orm = WebhookDelivery.objects.create(verdict="accepted", outcome="", **common)
    from imagekit_bgremove.statements import insert_row

    delivery = WebhookDelivery(verdict="accepted", outcome="", **common)
    insert_row(delivery)
    assert _stored(WebhookDelivery, delivery.pk) == _stored(WebhookDelivery, by_orm.pk)
    assert WebhookDelivery.objects.filter(pk=delivery.pk, remote_addr__isnull=True).exists()


def test_defaults_that_are_computed_are_computed_per_row():
    values = _job_values()
    del values["created_at"], values["updated_at"]  # default: timezone.now
    before = timezone.now()
    job = RemovalJob.objects.insert(**values)
    stored = RemovalJob.objects.get(pk=job.pk)
    assert before <= stored.created_at <= timezone.now()
    assert (job.created_at, job.updated_at) == (stored.created_at, stored.updated_at)
    assert job._state.db == "default"


def test_an_unsaved_related_object_is_refused_as_the_orm_refuses_it():
    with pytest.raises(ValueError, match="retry_of"):
        RemovalJob.objects.insert(**_job_values(retry_of=RemovalJob()))
    assert not RemovalJob.objects.exists()


def test_field_options_follow_the_settings_exactly(settings):
    """The field's merged options are kept between saves, but never across a settings change,
    not even to a value equal to the old one in Python's eyes (1 == True), which is invalid."""
    from imagekit_bgremove.options import OptionsError
    from imagekit_bgremove.services.request import field_options

    field = Product._meta.get_field("photo")
    base = settings.IMAGEKIT_BGREMOVE
    settings.IMAGEKIT_BGREMOVE = {**base, "DEFAULT_OPTIONS": {"add_shadow": True}}
    assert field_options(field).add_shadow is True
    settings.IMAGEKIT_BGREMOVE = {**base, "DEFAULT_OPTIONS": {"add_shadow": 1}}
    with pytest.raises(OptionsError, match="add_shadow"):
        field_options(field)
    settings.IMAGEKIT_BGREMOVE = {**base, "DEFAULT_OPTIONS": {}}
    assert field_options(field).add_shadow is False
