"""What the site does during the run: products saved through the ORM, the admin's add and change
forms and the REST API; re-saves of the same object (a new image, or the same bytes again);
identical images on different objects (after the first succeeded, while it is still at ImageKit,
and after its object was deleted); objects deleted while their job is unfinished.

Saves are paced: new products are saved while fewer than ``in_flight`` jobs are unfinished, as a
site whose uploads never outrun ImageKit for long. Every other action becomes due at a point of
the run (a share of the products saved) and waits until a target in the state it needs exists.
"""

from __future__ import annotations

import os
import random
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .config import SoakConfig
from .images import ImageSource, sha256
from .web import Web

UNFINISHED = ("queued", "submitting", "waiting", "pending", "received")
FINAL = ("succeeded", "failed", "superseded", "cancelled")
#: Other options an API request asks for (each a new (image, options): a new paid run).
API_OPTIONS = [{"bg_color": "ffffff"}, {"bg_color": "navy"}, {"add_shadow": True}]


@dataclass
class Plan:
    """What the run did, for the report and for ``verify``."""

    products: list[int] = field(default_factory=list)
    deleted: list[int] = field(default_factory=list)
    #: storage name -> sha256 of every original saved (each path, each re-save)
    originals: dict[str, str] = field(default_factory=dict)
    images_saved: int = 0
    done: Counter[str] = field(default_factory=Counter)
    #: {"product", "original_product", "original_job"}: identical images on another object
    identical: list[dict[str, Any]] = field(default_factory=list)
    #: twins of an in-flight original that was then given a new image
    identical_racing: list[dict[str, Any]] = field(default_factory=list)
    racing_pending: dict[int, dict[str, Any]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    started_at: float = 0.0
    twins: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "products": list(self.products),
            "deleted": list(self.deleted),
            "identical": list(self.identical),
            "identical_racing": list(self.identical_racing),
            "images_saved": self.images_saved,
            "done": dict(self.done),
            "errors": list(self.errors),
            "started_at": self.started_at,
        }


@dataclass
class Action:
    kind: str
    due: float  # a share of the products saved
    tries: int = 0


class State:
    """One read of every product's latest job (the app's ``prefetch_removal_state``)."""

    def __init__(self, plan: Plan):
        from example_project.catalogue.models import Product
        from imagekit_bgremove.state import prefetch_removal_state

        products = prefetch_removal_state(Product.objects.order_by().only("pk", "photo"))
        self.products: dict[int, dict[str, Any]] = {}
        for product in products:
            job = product.photo.removal
            self.products[product.pk] = {
                "photo": product.photo.name,
                "job": job.pk if job else None,
                "status": job.status if job else None,
                "duplicate_of": job.duplicate_of_id if job else None,
                "file_id": job.file_id if job else None,
            }
        self.unfinished = sum(1 for p in self.products.values() if p["status"] in UNFINISHED)

    def with_status(self, *statuses: str, busy: set[int] = frozenset()) -> list[int]:
        return sorted(
            pk for pk, p in self.products.items() if p["status"] in statuses and pk not in busy
        )


class Driver:
    def __init__(self, config: SoakConfig, plan: Plan, web: Web, rng: random.Random):
        self.config = config
        self.plan = plan
        self.web = web
        self.rng = rng
        self.images = ImageSource(config.seed, config.image_size)
        self.created = 0
        self.admin_added = 0
        self.lock = threading.Lock()
        self.busy: set[int] = set()
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="soak-web")
        self.running: list[Future] = []
        #: bytes of deleted products' images whose job had been sent, for identical saves later
        self.deleted_images: list[tuple[int, bytes, str]] = []
        n = config.images
        counts = {
            "resave": config.resave_fraction,
            "admin_resave": config.admin_resave_fraction,
            "admin_same": config.admin_same_fraction,
            "admin_add": config.admin_add_fraction,
            "api_options": config.api_options_fraction,
            "api_repeat": config.api_repeat_fraction,
            "api_force": config.api_force_fraction,
            "delete": config.delete_fraction,
            "identical": config.identical_fraction,
            "identical_of_deleted": config.delete_fraction / 2,
        }
        self.actions: list[Action] = []
        for kind, share in counts.items():
            for _ in range(max(1, round(n * share)) if share else 0):
                low = 0.5 if kind in ("api_repeat", "identical_of_deleted") else 0.05
                self.actions.append(Action(kind, rng.uniform(low, 0.95)))
        self.actions.sort(key=lambda a: a.due)
        self.admin_adds = sum(1 for a in self.actions if a.kind == "admin_add")
        self.orm_creates = n - self.admin_adds
        self.racing_wanted = max(1, round(n * config.racing_fraction))
        self.races_started = 0
        #: (product, options) of API requests with other options, to repeat them
        self.api_requested: list[tuple[int, dict[str, Any]]] = []

    # ----------------------------------------------------------------------------- the loop
    @property
    def progress(self) -> float:
        return self.created / max(1, self.orm_creates)

    def finished(self) -> bool:
        self._reap()
        return (
            self.created >= self.orm_creates
            and not self.actions
            and not self.running
            and not self.plan.racing_pending
            and self.races_started >= self.racing_wanted
        )

    def step(self, state: State) -> None:
        """One round: save new products up to the in-flight bound, then the due actions."""
        self._reap()
        room = self.config.in_flight - state.unfinished
        while room > 0 and self.created < self.orm_creates:
            self._create()
            room -= 1
        for action in [a for a in self.actions if a.due <= self.progress]:
            if self._try(action, state):
                self.actions.remove(action)
                self.plan.done[action.kind] += 1
            else:
                action.tries += 1
                if self.created >= self.orm_creates and action.tries > 400:
                    self.actions.remove(action)
                    self.plan.done[f"{action.kind} (no target)"] += 1
        if self.progress >= 0.3 and self.races_started < self.racing_wanted:
            self._start_race(state)
        self._advance_races(state)

    def close(self) -> None:
        for future in self.running:
            future.result()
        self.pool.shutdown()

    def _reap(self) -> None:
        for future in [f for f in self.running if f.done()]:
            self.running.remove(future)
            exc = future.exception()
            if exc is not None:
                self.plan.errors.append(f"{type(exc).__name__}: {exc}")

    def _in_background(self, pid: int | None, work: Callable[[], None]) -> None:
        if pid is not None:
            self.busy.add(pid)

        def run() -> None:
            from django.db import connection

            try:
                work()
            finally:
                connection.close()
                if pid is not None:
                    with self.lock:
                        self.busy.discard(pid)

        self.running.append(self.pool.submit(run))

    def _record(self, pid: int) -> None:
        """Note the product's stored original (whatever path saved it)."""
        from example_project.catalogue.models import Product

        product = Product.objects.get(pk=pid)
        with product.photo.open("rb") as fh:
            data = fh.read()
        with self.lock:
            self.plan.originals[product.photo.name] = sha256(data)
            self.plan.images_saved += 1

    # ----------------------------------------------------------------------------- the ORM
    def _create(self) -> None:
        from django.core.files.base import ContentFile

        from example_project.catalogue.models import Product

        n = self.created
        data, ext = self._next_image()
        product = Product.objects.create(
            name=f"soak {n:05d}", photo=ContentFile(data, name=f"soak-{n:05d}{ext}")
        )
        self.created += 1
        with self.lock:
            self.plan.products.append(product.pk)
            self.plan.originals[product.photo.name] = sha256(data)
            self.plan.images_saved += 1

    def _resave(self, pid: int, tag: str) -> None:
        from django.core.files.base import ContentFile

        from example_project.catalogue.models import Product

        product = Product.objects.get(pk=pid)
        data, ext = self._next_image()
        product.photo = ContentFile(data, name=f"soak-{pid:05d}-{tag}{ext}")
        product.save()
        with self.lock:
            self.plan.originals[product.photo.name] = sha256(data)
            self.plan.images_saved += 1

    def _twin_of(self, data: bytes, ext: str) -> int:
        from django.core.files.base import ContentFile

        from example_project.catalogue.models import Product

        self.plan.twins += 1
        number = self.plan.twins
        twin = Product.objects.create(
            name=f"soak twin {number:05d}",
            photo=ContentFile(data, name=f"soak-twin-{number:05d}{ext}"),
        )
        with self.lock:
            self.plan.products.append(twin.pk)
            self.plan.originals[twin.photo.name] = sha256(data)
            self.plan.images_saved += 1
        return twin.pk

    def _photo_bytes(self, pid: int) -> tuple[bytes, str]:
        from example_project.catalogue.models import Product

        product = Product.objects.get(pk=pid)
        with product.photo.open("rb") as fh:
            return fh.read(), os.path.splitext(product.photo.name)[1]

    def _next_image(self) -> tuple[bytes, str]:
        with self.lock:
            return self.images.next()

    def _pick(self, candidates: list[int]) -> int | None:
        deleted = set(self.plan.deleted)
        candidates = [c for c in candidates if c not in self.busy and c not in deleted]
        return self.rng.choice(candidates) if candidates else None

    # ----------------------------------------------------------------------------- actions
    def _try(self, action: Action, state: State) -> bool:
        kind = action.kind
        # ``state`` was read at the start of the round: products deleted since are off limits.
        busy = set(self.busy) | set(self.plan.racing_pending) | set(self.plan.deleted)
        in_flight = state.with_status("queued", "submitting", "pending", busy=busy)
        succeeded = state.with_status("succeeded", busy=busy)
        if kind == "resave":
            pid = self._pick(in_flight)
            if pid is None:
                return False
            self._resave(pid, "b")
            return True
        if kind in ("admin_resave", "admin_same"):
            pid = self._pick(in_flight if kind == "admin_resave" else in_flight + succeeded)
            if pid is None:
                return False
            self._in_background(pid, lambda: self._admin_change(pid, same=kind == "admin_same"))
            return True
        if kind == "admin_add":
            self._in_background(None, self._admin_add)
            return True
        if kind in ("api_options", "api_force"):
            pid = self._pick(succeeded)
            if pid is None:
                return False
            options = self.rng.choice(API_OPTIONS) if kind == "api_options" else {}
            if kind == "api_options":
                self.api_requested.append((pid, options))
            self._in_background(pid, lambda: self._api(pid, options, kind == "api_force"))
            return True
        if kind == "api_repeat":
            done = [
                (pid, options)
                for pid, options in self.api_requested
                if state.products.get(pid, {}).get("status") == "succeeded" and pid not in busy
            ]
            if not done:
                return False
            pid, options = self.rng.choice(done)
            self._in_background(pid, lambda: self._api(pid, options, False))
            return True
        if kind == "delete":
            # Spread over the unfinished states, the one at ImageKit most.
            wanted = self.rng.choice(["pending", "pending", "received", "waiting", "queued"])
            pid = self._pick(state.with_status(wanted, busy=busy)) or self._pick(
                state.with_status(*UNFINISHED, busy=busy)
            )
            if pid is None:
                return False
            self._delete(pid, state)
            return True
        if kind == "identical":
            pid = self._pick(succeeded)
            if pid is None:
                return False
            data, ext = self._photo_bytes(pid)
            twin = self._twin_of(data, ext)
            self.plan.identical.append(
                {
                    "product": twin,
                    "original_product": pid,
                    "original_job": state.products[pid]["job"],
                }
            )
            return True
        if kind == "identical_of_deleted":
            if not self.deleted_images:
                return False
            pid, data, ext = self.deleted_images.pop(0)
            twin = self._twin_of(data, ext)
            self.plan.identical.append(
                {"product": twin, "original_product": pid, "original_deleted": True}
            )
            return True
        raise ValueError(kind)

    def _delete(self, pid: int, state: State) -> None:
        from example_project.catalogue.models import Product

        product = Product.objects.filter(pk=pid).first()
        if product is None:
            return
        if state.products[pid]["file_id"]:
            with product.photo.open("rb") as fh:
                self.deleted_images.append(
                    (pid, fh.read(), os.path.splitext(product.photo.name)[1])
                )
        product.delete()
        self.plan.deleted.append(pid)

    def _admin_change(self, pid: int, *, same: bool) -> None:
        from example_project.catalogue.models import Product

        product = Product.objects.get(pk=pid)
        before = product.photo.name
        if same:
            with product.photo.open("rb") as fh:
                data = fh.read()
            ext = os.path.splitext(before)[1]
        else:
            data, ext = self._next_image()
        self.web.admin_save(
            f"/admin/catalogue/product/{pid}/change/",
            {"name": product.name, "description": "changed in the admin"},
            (f"admin-{pid:05d}{ext}", data),
            took_effect=lambda: Product.objects.filter(pk=pid).exclude(photo=before).exists(),
        )
        self._record(pid)

    def _admin_add(self) -> None:
        from example_project.catalogue.models import Product

        data, ext = self._next_image()
        with self.lock:
            self.admin_added += 1
            number = self.admin_added
        name = f"soak admin {number:05d}"
        self.web.admin_save(
            "/admin/catalogue/product/add/",
            {"name": name, "description": "added in the admin"},
            (f"admin-add-{number:05d}{ext}", data),
            took_effect=lambda: Product.objects.filter(name=name).exists(),
        )
        pid = Product.objects.get(name=name).pk
        # Noted before the product is offered to the other actions: a re-save picking it up in
        # between would make this image's file look like nobody's.
        self._record(pid)
        with self.lock:
            self.plan.products.append(pid)

    def _api(self, pid: int, options: dict[str, Any], force: bool) -> None:
        from imagekit_bgremove.models import RemovalJob

        last = RemovalJob.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
        self.web.api_request(
            pid,
            options,
            force,
            took_effect=lambda: RemovalJob.objects.filter(
                pk__gt=last, object_id=str(pid), trigger="api"
            ).exists(),
        )

    # ----------------------------------------------------------------------------- races
    def _start_race(self, state: State) -> None:
        """A twin of a product whose job is pending at ImageKit: the twin waits for it. Once
        it does, the original gets a new image (its job is superseded while paid for)."""
        busy = set(self.busy) | set(self.plan.racing_pending) | set(self.plan.deleted)
        candidates = [
            pid
            for pid in state.with_status("pending", busy=busy)
            if not state.products[pid]["duplicate_of"]
        ]
        pid = self._pick(candidates)
        if pid is None:
            return
        data, ext = self._photo_bytes(pid)
        self.plan.racing_pending[pid] = {
            "product": self._twin_of(data, ext),
            "original_product": pid,
            "original_job": state.products[pid]["job"],
        }
        self.races_started += 1

    def _advance_races(self, state: State) -> None:
        from imagekit_bgremove.models import RemovalJob

        for pid, race in list(self.plan.racing_pending.items()):
            original = RemovalJob.objects.filter(pk=race["original_job"]).first()
            twin = state.products.get(race["product"], {})
            original_open = original is not None and original.status == "pending"
            waits = (
                twin.get("status") == "waiting"
                and twin.get("duplicate_of") == (race["original_job"])
            )
            if waits and original_open:
                self._resave(pid, "d")
                race["outcome"] = "original superseded while its twin waited"
            elif original_open and twin.get("status") in ("queued", "submitting", None):
                continue  # the twin is not submitted yet
            elif not original_open:
                race["outcome"] = "the original settled first"
            else:
                race["outcome"] = f"the twin is {twin.get('status')}, not waiting"
            self.plan.identical_racing.append(race)
            del self.plan.racing_pending[pid]
