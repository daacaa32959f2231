"""The few JSON schemas of ImageKit's API the emulator validates requests against, as data.

Source: ImageKit's OpenAPI spec v1.0.0 (``openapi-v1.0.0.yaml``, the file ImageKit generates
its SDKs from), ``components.schemas``: ``Extensions`` and the item schemas it references
(``RemovedotBGExtension``, ``AutoTaggingExtension``, ``AutoDescriptionExtension``,
``AITasksExtension`` with its ``AITask*`` schemas, ``SavedExtensionReference``). Copied as
the spec states them, descriptions and examples left out; keep them in step with the spec
rather than with the Django app, whose own validation is what the emulator must be able to
catch out. (Python data rather than a JSON file so that it ships in every install without
package-data configuration.)

Note what the spec does NOT say: ``options`` of remove-bg has no ``additionalProperties:
false`` and no constraint on the values of ``bg_color``/``bg_image_url`` beyond being
strings; ImageKit documents that they are "passed to remove.bg as it is". So those are
checked when the job runs (a FAILURE callback), not here (a 400).
"""

from __future__ import annotations

from typing import Any

REF_PREFIX = "#/components/schemas/"

_metadata_value: dict[str, Any] = {
    "oneOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}],
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Extensions": {
        "type": "array",
        "items": {
            "discriminator": {"propertyName": "name"},
            "anyOf": [
                {"$ref": REF_PREFIX + "RemovedotBGExtension"},
                {"$ref": REF_PREFIX + "AutoTaggingExtension"},
                {"$ref": REF_PREFIX + "AutoDescriptionExtension"},
                {"$ref": REF_PREFIX + "AITasksExtension"},
                {"$ref": REF_PREFIX + "SavedExtensionReference"},
            ],
        },
    },
    "RemovedotBGExtension": {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "const": "remove-bg"},
            "options": {
                "type": "object",
                "properties": {
                    "add_shadow": {"type": "boolean", "default": False},
                    "semitransparency": {"type": "boolean", "default": True},
                    "bg_color": {"type": "string"},
                    "bg_image_url": {"type": "string"},
                },
            },
        },
    },
    "AutoTaggingExtension": {
        "type": "object",
        "required": ["name", "minConfidence", "maxTags"],
        "properties": {
            "name": {"type": "string", "enum": ["google-auto-tagging", "aws-auto-tagging"]},
            "minConfidence": {"type": "integer"},
            "maxTags": {"type": "integer"},
        },
    },
    "AutoDescriptionExtension": {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string", "const": "ai-auto-description"}},
    },
    "AITasksExtension": {
        "type": "object",
        "required": ["name", "tasks"],
        "properties": {
            "name": {"type": "string", "const": "ai-tasks"},
            "tasks": {
                "type": "array",
                "minItems": 1,
                "maxItems": 10,
                "items": {
                    "discriminator": {"propertyName": "type"},
                    "oneOf": [
                        {"$ref": REF_PREFIX + "AITaskSelectTags"},
                        {"$ref": REF_PREFIX + "AITaskSelectMetadata"},
                        {"$ref": REF_PREFIX + "AITaskYesNo"},
                    ],
                },
            },
        },
    },
    "AITaskSelectTags": {
        "type": "object",
        "required": ["type", "instruction"],
        "properties": {
            "type": {"type": "string", "const": "select_tags"},
            "instruction": {"type": "string", "minLength": 1, "maxLength": 2000},
            "vocabulary": {
                "type": "array",
                "minItems": 1,
                "maxItems": 30,
                "items": {"type": "string"},
            },
            "min_selections": {"type": "integer", "minimum": 0},
            "max_selections": {"type": "integer", "minimum": 1},
        },
    },
    "AITaskSelectMetadata": {
        "type": "object",
        "required": ["type", "instruction", "field"],
        "properties": {
            "type": {"type": "string", "const": "select_metadata"},
            "instruction": {"type": "string", "minLength": 1, "maxLength": 2000},
            "field": {"type": "string"},
            "vocabulary": {
                "type": "array",
                "minItems": 1,
                "maxItems": 30,
                "items": _metadata_value,
            },
            "min_selections": {"type": "integer", "minimum": 0},
            "max_selections": {"type": "integer", "minimum": 1},
        },
    },
    "AITaskYesNo": {
        "type": "object",
        "required": ["type", "instruction"],
        "properties": {
            "type": {"type": "string", "const": "yes_no"},
            "instruction": {"type": "string", "minLength": 1, "maxLength": 2000},
            "on_yes": {"$ref": REF_PREFIX + "AITaskAction"},
            "on_no": {"$ref": REF_PREFIX + "AITaskAction"},
            "on_unknown": {"$ref": REF_PREFIX + "AITaskAction"},
        },
    },
    "AITaskAction": {
        "type": "object",
        "properties": {
            "add_tags": {"type": "array", "items": {"type": "string"}},
            "remove_tags": {"type": "array", "items": {"type": "string"}},
            "set_metadata": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["field", "value"],
                    "properties": {
                        "field": {"type": "string"},
                        "value": {
                            "oneOf": [
                                {"type": "string"},
                                {"type": "number"},
                                {"type": "boolean"},
                                {"type": "array", "items": _metadata_value},
                            ]
                        },
                    },
                },
            },
            "unset_metadata": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["field"],
                    "properties": {"field": {"type": "string"}},
                },
            },
        },
    },
    "SavedExtensionReference": {
        "type": "object",
        "required": ["name", "id"],
        "properties": {
            "name": {"type": "string", "const": "saved-extension"},
            "id": {"type": "string"},
        },
    },
}

#: The ``extensionStatus`` values the spec's enum allows.
EXTENSION_STATUSES = ("success", "pending", "failed")
