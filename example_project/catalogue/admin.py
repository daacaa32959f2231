from django.contrib import admin

from imagekit_bgremove.admin import BackgroundRemovalAdminMixin

from .models import Product


@admin.register(Product)
class ProductAdmin(BackgroundRemovalAdminMixin, admin.ModelAdmin):
    list_display = ["name", "removal_status_column"]
    search_fields = ["name", "description"]
    fields = ["name", "description", "photo", "removal_preview"]
