"""The catalogue's own REST API: products, with their photo's background removal.

``/api/products/`` (list, create, retrieve, update, delete) and
``/api/products/<pk>/remove-background/``, built from :mod:`imagekit_bgremove.rest_framework`.
Authentication: the project's (session, token, basic); permissions: Django's model permissions
(view to read, add to create, change to edit or to remove a background again, delete).
"""

from __future__ import annotations

from rest_framework import serializers, viewsets
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.permissions import DjangoModelPermissions
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle

from imagekit_bgremove.api import RemovalPagination, error_responses
from imagekit_bgremove.api_schema import OpenApiExample, extend_schema, extend_schema_view
from imagekit_bgremove.rest_framework import (
    PARSER_CLASSES,
    BackgroundRemovalField,
    BackgroundRemovalViewSetMixin,
    CodedErrorsMixin,
    RemovalOptionsField,
    StrictFieldsMixin,
)

from .models import Product


class ProductSerializer(StrictFieldsMixin, serializers.HyperlinkedModelSerializer):
    photo = BackgroundRemovalField(required=False, allow_null=True)
    photo_options = RemovalOptionsField(
        help_text="remove-bg options for the photo uploaded with this request."
    )

    class Meta:
        model = Product
        fields = ["id", "url", "name", "description", "photo", "photo_options"]


class ProductPermissions(DjangoModelPermissions):
    """Django's model permissions, reading included; removing a background again is a change."""

    perms_map = {
        **DjangoModelPermissions.perms_map,
        "GET": ["%(app_label)s.view_%(model_name)s"],
        "HEAD": ["%(app_label)s.view_%(model_name)s"],
    }

    def has_permission(self, request, view) -> bool:
        if getattr(view, "action", None) == "remove_background":
            user = request.user
            if not (user and user.is_authenticated):
                return False
            return user.has_perms(self.get_required_permissions("PATCH", Product))
        return super().has_permission(request, view)


PRODUCT_ERRORS = error_responses(400, 401, 403, 413, 415, 429)
UPLOAD_EXAMPLE = OpenApiExample(
    "A product without a photo yet (photos are multipart uploads)",
    value={"name": "Mug", "description": "Stoneware"},
    request_only=True,
)


@extend_schema(tags=["products"])
@extend_schema_view(
    list=extend_schema(
        summary="List products",
        description="By name, paginated like the removal jobs (page, page_size).",
        responses={200: ProductSerializer(many=True), **error_responses(401, 403, 404)},
    ),
    retrieve=extend_schema(
        summary="One product",
        description="With its photo's removal state: poll photo.job while it is unfinished.",
        responses={200: ProductSerializer, **error_responses(401, 403, 404)},
    ),
    create=extend_schema(
        summary="Create a product",
        description="Upload a photo (multipart/form-data: photo, and photo_options as a JSON "
        "string) to have its background removed; the answer has the job to poll under "
        "photo.job.",
        responses={201: ProductSerializer, **PRODUCT_ERRORS},
        examples=[UPLOAD_EXAMPLE],
    ),
    update=extend_schema(
        summary="Replace a product",
        description="A new photo has its background removed, as on create.",
        responses={200: ProductSerializer, **PRODUCT_ERRORS, **error_responses(404)},
    ),
    partial_update=extend_schema(
        summary="Change a product",
        description="A new photo has its background removed, as on create.",
        responses={200: ProductSerializer, **PRODUCT_ERRORS, **error_responses(404)},
    ),
    destroy=extend_schema(
        summary="Delete a product", responses={204: None, **error_responses(401, 403, 404)}
    ),
)
class ProductViewSet(BackgroundRemovalViewSetMixin, viewsets.ModelViewSet):
    """The catalogue's products; each photo uploaded has its background removed."""

    queryset = Product.objects.all()
    serializer_class = ProductSerializer
    permission_classes = [ProductPermissions]
    pagination_class = RemovalPagination


class TokenSerializer(serializers.Serializer):
    token = serializers.CharField(help_text='Send it as "Authorization: Token <token>".')


class InvalidCredentials(APIException):
    status_code = 400
    default_detail = "Unable to log in with provided credentials."
    default_code = "invalid_credentials"


class TokenRateThrottle(SimpleRateThrottle):
    """Password guesses per client address: the "token" rate of DEFAULT_THROTTLE_RATES."""

    scope = "token"

    def get_rate(self) -> str | None:
        return (api_settings.DEFAULT_THROTTLE_RATES or {}).get(self.scope, "20/hour")

    def get_cache_key(self, request, view) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class ObtainToken(CodedErrorsMixin, ObtainAuthToken):
    """Your API token, for your user name and password (form fields or JSON)."""

    parser_classes = PARSER_CLASSES
    throttle_classes = [TokenRateThrottle]

    @extend_schema(
        summary="Get your API token",
        tags=["authentication"],
        responses={200: TokenSerializer, **error_responses(400, 415, 429)},
        auth=[],
    )
    def post(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        if not serializer.is_valid():
            errors = serializer.errors
            if set(errors) == {api_settings.NON_FIELD_ERRORS_KEY}:  # a wrong name or password
                raise InvalidCredentials(str(errors[api_settings.NON_FIELD_ERRORS_KEY][0]))
            raise ValidationError(errors)
        token, _created = Token.objects.get_or_create(user=serializer.validated_data["user"])
        return Response({"token": token.key})
