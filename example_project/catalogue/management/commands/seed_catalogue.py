"""Fill the demo catalogue and make an ``admin`` user.

The photos are ones the bundled emulator cuts out cleanly. It removes backgrounds with classical
segmentation (border colour on plain backgrounds, GrabCut on busy ones), not remove.bg's model,
so busy photos come out rougher offline (the admin says so): the catalogue holds a studio shot
(example_project/sample_images/, licences in its LICENCE.md) and three product shots drawn here
on plain studio backgrounds.

Idempotent: products that exist (by name) are left alone, and so is an existing admin's password
unless ``--password`` is given. Each new product's photo is sent for background removal when it
is saved (the work itself happens in ``manage.py db_worker``).
"""

from __future__ import annotations

import io
import secrets
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.files import File
from django.core.files.base import ContentFile
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from example_project.catalogue.models import Product

SAMPLES = Path(__file__).resolve().parents[3] / "sample_images"


def drawn_product(kind: str) -> bytes:
    """A simple product shot on a plain, softly lit studio background (PNG). No holes: the
    emulator keeps background the subject encloses (the inside of a mug's handle), remove.bg
    would not."""
    from PIL import Image, ImageDraw, ImageFilter

    width, height = 640, 480
    background = Image.linear_gradient("L").resize((width, height)).point(lambda v: 236 + v // 24)
    image = Image.merge("RGB", (background, background, background.point(lambda v: v - 4)))
    shadow = Image.new("L", (width, height), 0)
    ImageDraw.Draw(shadow).ellipse((200, 380, 460, 410), fill=70)
    image.paste((150, 150, 150), mask=shadow.filter(ImageFilter.GaussianBlur(8)))
    draw = ImageDraw.Draw(image)
    if kind == "mug":
        draw.ellipse((376, 180, 466, 310), fill=(168, 36, 44))  # a solid handle: no hole
        draw.rounded_rectangle((200, 130, 410, 395), radius=26, fill=(196, 45, 52))
        draw.rectangle((222, 150, 250, 370), fill=(224, 96, 100))
    elif kind == "pot":
        draw.ellipse((250, 70, 410, 210), fill=(56, 142, 60))  # the plant, one solid crown
        draw.rectangle((318, 190, 342, 250), fill=(46, 110, 50))
        draw.polygon([(220, 240), (440, 240), (405, 395), (255, 395)], fill=(196, 110, 64))
        draw.rectangle((212, 232, 448, 262), fill=(176, 96, 54))
    else:  # a watering can
        draw.polygon([(420, 250), (560, 150), (575, 168), (440, 290)], fill=(38, 112, 184))
        draw.rounded_rectangle((250, 150, 330, 200), radius=10, fill=(30, 92, 160))
        draw.rounded_rectangle((170, 190, 440, 395), radius=30, fill=(38, 112, 184))
        draw.rectangle((190, 210, 214, 375), fill=(88, 152, 214))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


# name, photo (a sample file name, or ("drawn", kind)), description
CATALOGUE = [
    (
        "Studio gadget",
        "synthetic_product_white.jpg",
        "A product on a white studio background: the emulator's border-colour method cuts it "
        "out cleanly.",
    ),
    (
        "Red mug",
        ("drawn", "mug"),
        "Drawn on a plain background at seeding: a clean cut-out; its cast shadow goes with the "
        "background.",
    ),
    (
        "Watering can",
        ("drawn", "can"),
        "Drawn on a plain background at seeding: try “Remove background…” with a colour.",
    ),
    (
        "Flower pot",
        ("drawn", "pot"),
        "Drawn on a plain background at seeding. Busy photos (try "
        "example_project/sample_images/coffee.jpg) come out rougher offline than with remove.bg.",
    ),
]


class Command(BaseCommand):
    help = "Create the demo products (idempotent) and an 'admin' superuser."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--password", help="Set the admin user's password to this.")
        parser.add_argument("--username", default="admin", help="Admin user name (default admin).")
        parser.add_argument("--no-admin", action="store_true", help="Do not touch the admin user.")

    def handle(self, *args, password: str | None, username: str, no_admin: bool, **options) -> None:
        created = 0
        for name, photo, description in CATALOGUE:
            if Product.objects.filter(name=name).exists():
                continue
            product = Product(name=name, description=description)
            with transaction.atomic():
                if isinstance(photo, tuple):
                    slug = name.lower().replace(" ", "_")
                    product.photo.save(
                        f"{slug}.png", ContentFile(drawn_product(photo[1])), save=False
                    )
                else:
                    path = SAMPLES / photo
                    if not path.is_file():
                        raise CommandError(f"Missing sample image {path}")
                    with path.open("rb") as fh:
                        product.photo.save(photo, File(fh), save=False)
                product.save()
            created += 1
        self.stdout.write(
            f"Catalogue: {created} product(s) created, {Product.objects.count()} in total."
        )
        if not no_admin:
            self._admin(username, password)

    def _admin(self, username: str, password: str | None) -> None:
        users = get_user_model()
        user = users._default_manager.filter(**{users.USERNAME_FIELD: username}).first()
        if user is not None and not password:
            self.stdout.write(f"Admin user {username!r} exists (password unchanged).")
            return
        generated = password is None
        password = password or secrets.token_urlsafe(12)
        if user is None:
            users._default_manager.create_superuser(username=username, email="", password=password)
            action = "created"
        else:
            user.set_password(password)
            user.is_staff = user.is_superuser = user.is_active = True
            user.save()
            action = "updated"
        if generated:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Admin user {username!r} {action}; password: {password}  (shown only once)"
                )
            )
        else:
            self.stdout.write(self.style.SUCCESS(f"Admin user {username!r} {action}."))
