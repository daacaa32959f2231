"""Fill the demo catalogue from example_project/sample_images/ and make an ``admin`` user.

Idempotent: products that exist (by name) are left alone, and so is an existing admin's password
unless ``--password`` is given. Each new product's photo is sent for background removal when it
is saved (the work itself happens in ``manage.py db_worker``).
"""

from __future__ import annotations

import secrets
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.files import File
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from example_project.catalogue.models import Product

SAMPLES = Path(__file__).resolve().parents[3] / "sample_images"

CATALOGUE = [
    (
        "Studio gadget",
        "synthetic_product_white.jpg",
        "A synthetic product on a white studio background: the easy case.",
    ),
    ("Coffee cup", "coffee.jpg", "A cup of coffee on a saucer."),
    ("Chelsea the cat", "chelsea.jpg", "Not for sale."),
    ("Astronaut portrait", "astronaut.jpg", "Eileen Collins, NASA (public domain)."),
]


class Command(BaseCommand):
    help = "Create the demo products (idempotent) and an 'admin' superuser."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--password", help="Set the admin user's password to this.")
        parser.add_argument("--username", default="admin", help="Admin user name (default admin).")
        parser.add_argument("--no-admin", action="store_true", help="Do not touch the admin user.")

    def handle(self, *args, password: str | None, username: str, no_admin: bool, **options) -> None:
        created = 0
        for name, filename, description in CATALOGUE:
            path = SAMPLES / filename
            if not path.is_file():
                raise CommandError(f"Missing sample image {path}")
            if Product.objects.filter(name=name).exists():
                continue
            with transaction.atomic(), path.open("rb") as fh:
                product = Product(name=name, description=description)
                product.photo.save(filename, File(fh), save=False)
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
