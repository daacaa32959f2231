from django.db import models

from imagekit_bgremove.fields import BackgroundRemovalImageField


class Product(models.Model):
    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    # Every new or changed photo is sent to ImageKit's remove-bg; the cut-out lands next to it.
    photo = BackgroundRemovalImageField(upload_to="products", blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
