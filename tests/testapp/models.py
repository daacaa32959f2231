import uuid

from django.db import models

from imagekit_bgremove.fields import BackgroundRemovalImageField


def only_published(instance) -> bool:
    """A remove_bg_trigger callable: remove backgrounds of published items only."""
    return bool(getattr(instance, "published", False))


class Product(models.Model):
    name = models.CharField(max_length=100, blank=True)
    photo = BackgroundRemovalImageField(
        upload_to="products", blank=True, remove_bg_options={"bg_color": "ffffff"}
    )

    def __str__(self) -> str:
        return self.name or f"Product {self.pk}"


class PlainProduct(models.Model):
    """The same shape with a plain ImageField: the baseline of the save() benchmark."""

    name = models.CharField(max_length=100, blank=True)
    photo = models.ImageField(upload_to="products", blank=True)

    def __str__(self) -> str:
        return self.name


class Asset(models.Model):
    """Images that already live in ImageKit: removal goes through Update File Details."""

    imagekit_file_id = models.CharField(max_length=100, blank=True)
    image = BackgroundRemovalImageField(
        upload_to="assets",
        blank=True,
        imagekit_file_id_field="imagekit_file_id",
        imagekit_folder="/assets",
        imagekit_tags=["asset"],
    )

    def __str__(self) -> str:
        return self.imagekit_file_id or f"Asset {self.pk}"


class Document(models.Model):
    """A UUID primary key, and removal only on request."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    scan = BackgroundRemovalImageField(upload_to="scans", blank=True, remove_bg_trigger="manual")

    def __str__(self) -> str:
        return str(self.pk)


class Article(models.Model):
    published = models.BooleanField(default=False)
    cover = BackgroundRemovalImageField(
        upload_to="covers", blank=True, remove_bg_trigger=only_published
    )

    def __str__(self) -> str:
        return f"Article {self.pk}"


class ProductProxy(Product):
    """A proxy shares its concrete model's jobs."""

    class Meta:
        proxy = True


class FeaturedProduct(Product):
    """A multi-table child: its image lives in Product's table, so do its jobs."""

    headline = models.CharField(max_length=100, blank=True)


class Poster(models.Model):
    """Lives in the "other" database (tests/routers.py); its jobs live with the app's tables."""

    image = BackgroundRemovalImageField(upload_to="posters", blank=True)

    def __str__(self) -> str:
        return f"Poster {self.pk}"
