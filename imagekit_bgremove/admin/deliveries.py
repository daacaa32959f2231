"""The read-only admin of webhook deliveries."""

from __future__ import annotations

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from ..models import DeliveryVerdict, WebhookDelivery
from .display import badge
from .jobs import ReadOnlyAdmin

VERDICT_CSS = {
    DeliveryVerdict.ACCEPTED: "ikbg-s-succeeded",
    DeliveryVerdict.DUPLICATE: "ikbg-s-queued",
    DeliveryVerdict.IGNORED: "ikbg-s-none",
    DeliveryVerdict.MALFORMED: "ikbg-s-waiting",
    DeliveryVerdict.UNAUTHENTIC: "ikbg-s-failed",
    DeliveryVerdict.ERROR: "ikbg-s-failed",
}


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "received_at",
        "verdict_badge",
        "status_code",
        "job_link",
        "remote_addr",
        "body_size",
        "signature_scheme",
    ]
    list_filter = ["verdict", "status_code", "signature_scheme"]
    search_fields = ["job__file_id", "outcome", "error"]
    date_hierarchy = "received_at"
    list_select_related = ["job"]
    # Shown once, as the table below, not also as the raw JSON.
    exclude = ["headers"]

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields if f.name != "headers"] + ["pretty_headers"]

    @admin.display(description=gettext_lazy("verdict"), ordering="verdict")
    def verdict_badge(self, delivery: WebhookDelivery) -> str:
        if not delivery.verdict:
            return badge(_("Open"), "ikbg-s-none")
        return badge(
            delivery.get_verdict_display(), VERDICT_CSS.get(delivery.verdict, "ikbg-s-queued")
        )

    @admin.display(description=gettext_lazy("job"))
    def job_link(self, delivery: WebhookDelivery) -> str:
        if not delivery.job_id:
            return "-"
        url = reverse(
            f"{self.admin_site.name}:imagekit_bgremove_removaljob_change", args=[delivery.job_id]
        )
        return format_html('<a href="{}">#{}</a>', url, delivery.job_id)

    @admin.display(description=gettext_lazy("headers"))
    def pretty_headers(self, delivery: WebhookDelivery) -> str:
        return format_html(
            "<table>{}</table>",
            format_html_join(
                "", "<tr><th>{}</th><td><code>{}</code></td></tr>", sorted(delivery.headers.items())
            ),
        )
