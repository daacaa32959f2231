"""The remove-bg options as admin form fields: on the "Remove background…" page, on the retry
page, and as the small "options for a new image" fieldset of a change form."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from django import forms
from django.utils.translation import gettext_lazy as _

from ..inputs import check_options
from ..removebg import NON_FIELD, OptionsError, RemoveBgOptions

ADMIN_STATIC = "imagekit_bgremove/admin/"

HELP = {
    "bg_color": _(
        "Fill the background with this colour instead of leaving it transparent: a hex code "
        "(81d4fa, #fff) or a colour name (white). Leave empty for a transparent background."
    ),
    "bg_image_url": _(
        "Or put this image behind the subject: the http(s) address of a JPEG or PNG. Use a "
        "colour or an image, not both."
    ),
    "add_shadow": _(
        "Add a soft drop shadow under the subject. remove.bg adds it to photos of cars only "
        "and ignores it for other photos."
    ),
    "semitransparency": _(
        "Keep see-through parts, such as glass, partly transparent. remove.bg applies this to "
        "car windows only; other photos are cut out the same either way."
    ),
    "force": _(
        "Send images even when they were already processed with these exact options. Each one "
        "costs ImageKit extension units and counts against the daily budget."
    ),
}

#: The options page's fieldsets: (heading, description, fields).
FIELDSETS = (
    (_("Background"), "", ("bg_color", "bg_image_url")),
    (_("Effects"), "", ("add_shadow", "semitransparency")),
    (_("Sending again"), "", ("force",)),
)


class ColourInput(forms.TextInput):
    """A text box for a hex code or colour name, with a colour picker beside it that fills it
    (options.js keeps them in step; without JavaScript the text box works alone)."""

    template_name = "imagekit_bgremove/widgets/colour.html"

    class Media:
        js = [ADMIN_STATIC + "options.js"]

    def __init__(self, attrs: dict[str, Any] | None = None):
        super().__init__(
            {"size": 12, "autocomplete": "off", "spellcheck": "false", **(attrs or {})}
        )

    def get_context(self, name: str, value: Any, attrs: dict[str, Any] | None) -> dict[str, Any]:
        context = super().get_context(name, value, attrs)
        text = str(value or "").strip().lstrip("#").lower()
        if len(text) == 3 and all(c in "0123456789abcdef" for c in text):
            text = "".join(c * 2 for c in text)
        ok = len(text) in (6, 8) and all(c in "0123456789abcdef" for c in text)
        context["widget"]["picker_value"] = f"#{text[:6]}" if ok else "#ffffff"
        return context


def option_fields() -> dict[str, forms.Field]:
    """Fresh form fields for the four options (labels, help texts, the colour picker)."""
    return {
        "bg_color": forms.CharField(
            label=_("Background colour"),
            required=False,
            max_length=40,
            widget=ColourInput(),
            help_text=HELP["bg_color"],
        ),
        "bg_image_url": forms.CharField(
            label=_("Background image URL"),
            required=False,
            max_length=2048,
            widget=forms.URLInput(attrs={"size": 60}),
            help_text=HELP["bg_image_url"],
        ),
        "add_shadow": forms.BooleanField(
            label=_("Add a shadow"), required=False, help_text=HELP["add_shadow"]
        ),
        "semitransparency": forms.BooleanField(
            label=_("Semi-transparency"), required=False, help_text=HELP["semitransparency"]
        ),
    }


def options_from(form: forms.Form, prefix: str = "") -> RemoveBgOptions | None:
    """Validate the option fields of ``form`` (named ``prefix + option``) with RemoveBgOptions;
    errors land on their fields. None when invalid."""
    picked = {
        name: form.cleaned_data.get(prefix + name)
        for name in RemoveBgOptions.field_names()
        if prefix + name in form.fields and prefix + name not in form.errors
    }
    try:
        options = RemoveBgOptions.from_form(picked)
        check_options(options)
        return options
    except OptionsError as exc:
        labels = {
            name: str(form.fields[prefix + name].label)
            for name in RemoveBgOptions.field_names()
            if prefix + name in form.fields
        }
        for key, messages in exc.errors.items():
            target = prefix + key
            form.add_error(
                None if key == NON_FIELD or target not in form.fields else target,
                [human_labels(message, labels) for message in messages],
            )
        return None


def human_labels(message: str, labels: dict[str, str]) -> str:
    """The API's option names in ``message`` (bg_color) as the form labels them (Background
    colour): staff see the labels, not the keys."""
    if not labels:
        return message
    pattern = r"\b(" + "|".join(map(re.escape, labels)) + r")\b"
    return re.sub(pattern, lambda match: labels[match.group(1)], message)


class RemoveBackgroundForm(forms.Form):
    """The remove-bg options of the "Remove background…" and retry pages."""

    field = forms.ChoiceField(label=_("Image field"), required=True)
    force = forms.BooleanField(label=_("Send again"), required=False, help_text=HELP["force"])

    fieldsets = FIELDSETS

    def __init__(
        self,
        *args: Any,
        field_choices: Sequence[str | tuple[str, str]] = (),
        base: RemoveBgOptions | None = None,
        force_initial: bool = False,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        for name, field in option_fields().items():
            self.fields[name] = field
        choices = [(c, c) if isinstance(c, str) else tuple(c) for c in field_choices]
        self.fields["field"].choices = choices
        if len(choices) == 1:
            self.fields["field"].initial = choices[0][0]
            self.fields["field"].widget = forms.HiddenInput()
        self.base = base
        if not self.is_bound:
            self.fields["force"].initial = force_initial
            if base is not None:
                for name, value in base.to_dict().items():
                    self.fields[name].initial = value or ("" if value is None else value)
        # Keep the fields in the order of the fieldsets (the field choice first).
        order = ["field"] + [name for _, _, names in self.fieldsets for name in names]
        self.order_fields(order)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        options = options_from(self)
        if options is not None:
            cleaned["options"] = options
        return cleaned

    def admin_fieldsets(self) -> list[tuple[Any, dict[str, Any]]]:
        """Fieldsets for ``django.contrib.admin.helpers.AdminForm``, so that the page renders
        with Django's own fieldset template, as an admin form does."""
        fieldsets = []
        for title, description, names in self.fieldsets:
            present = [name for name in names if name in self.fields]
            if present:
                fieldsets.append((title, {"fields": present, "description": description}))
        if isinstance(self.fields["field"].widget, forms.HiddenInput):
            fieldsets[0][1]["fields"].insert(0, "field")
        else:
            fieldsets.insert(0, (_("Image"), {"fields": ["field"]}))
        return fieldsets


def upload_option_fields(field_name: str, base: RemoveBgOptions) -> dict[str, forms.Field]:
    """The change form's "options for a new image" fields of one image field, named
    ``ikbg_<field>_<option>``, starting from the field's own options."""
    fields = {}
    for name, field in option_fields().items():
        value = getattr(base, name)
        field.initial = "" if value is None else value
        fields[upload_prefix(field_name) + name] = field
    return fields


def upload_prefix(field_name: str) -> str:
    return f"ikbg_{field_name}_"
