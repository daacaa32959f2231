"""The emulator's own capacity, measured in the same run: what the soak's images/s is held against.

The emulator alone, with no app in front: a fresh emulator process started exactly as the
soak's (the same remove-bg worker pool, ``--data-dir``, time scale), without faults, is driven
by as many client threads as the soak has task workers, with the soak's own images (the first
``capacity_images`` of the same seed) and the same bound on work in flight. Each image costs
what it costs the emulator in the soak: the upload with the remove-bg extension, the run, the
signed callback (to a receiver that answers 200 at once) and one download of the result with
``tr=orig-true``. Capacity is images / (last result downloaded - first upload started). Nothing
of the app runs meanwhile: the app's processes start after the probe.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

from .cpu import _stat
from .images import ImageSource
from .procs import LOCALHOST, Children, free_port, wait_until_answers


def measure(
    children: Children,
    emulator_argv: list[str],
    env: dict[str, str],
    *,
    data_dir: Path,
    images: int,
    seed: int,
    clients: int,
    in_flight: int,
    image_size: tuple[int, int],
    timeout: float = 600.0,
) -> dict[str, Any]:
    import requests

    from imagekit_emulator.testing import CallbackReceiver

    port = free_port()
    argv = _replace(emulator_argv, "--port", str(port))
    argv = _replace(argv, "--data-dir", str(data_dir))
    argv = _replace(argv, "--faults", "{}")
    url = f"http://{LOCALHOST}:{port}"
    proc = children.start("capacity-emulator", argv, env)
    source = ImageSource(seed, image_size)
    work = [source.next() for _ in range(images)]
    todo: queue.Queue[int] = queue.Queue()
    for index in range(images):
        todo.put(index)
    slots = threading.Semaphore(max(1, in_flight))
    uploaded: dict[str, float] = {}
    done: dict[str, float] = {}
    errors: list[str] = []
    lock = threading.Lock()
    cpu = None
    try:
        wait_until_answers(f"{url}/_emulator/health", proc, "the capacity emulator")
        with CallbackReceiver() as hooks:

            def upload(session: requests.Session) -> None:
                while True:
                    try:
                        index = todo.get_nowait()
                    except queue.Empty:
                        return
                    slots.acquire()
                    data, ext = work[index]
                    name = f"capacity-{index:05d}{ext}"
                    with lock:
                        uploaded.setdefault("_first", time.monotonic())
                    answer = session.post(
                        f"{url}/api/v1/files/upload",
                        auth=("private_emulator_key", ""),
                        files={"file": (name, data)},
                        data={
                            "fileName": name,
                            "folder": "/capacity",
                            "useUniqueFileName": "false",
                            "extensions": json.dumps([{"name": "remove-bg", "options": {}}]),
                            "webhookUrl": hooks.url,
                        },
                        timeout=60,
                    )
                    if answer.status_code != 200:
                        errors.append(f"upload {answer.status_code}: {answer.text[:200]}")
                        slots.release()
                        continue
                    with lock:
                        uploaded[answer.json()["fileId"]] = time.monotonic()

            def download() -> None:
                session = requests.Session()
                seen = 0
                deadline = time.monotonic() + timeout
                while len(done) + len(errors) < images and time.monotonic() < deadline:
                    arrived = hooks.wait_for(seen + 1, timeout=1.0)
                    for request in arrived[seen:]:
                        seen += 1
                        payload = request.json()
                        try:
                            if payload.get("status") != "SUCCESS":
                                errors.append(f"callback {payload.get('status')}")
                                continue
                            result = payload["fileObject"]["url"]
                            got = session.get(result, params={"tr": "orig-true"}, timeout=60)
                            if got.status_code != 200 or not got.content:
                                errors.append(f"download {got.status_code}")
                            else:
                                with lock:
                                    done[payload["fileObject"]["fileId"]] = time.monotonic()
                        finally:
                            slots.release()

            threads = [
                threading.Thread(target=upload, args=(requests.Session(),), daemon=True)
                for _ in range(clients)
            ]
            receiver = threading.Thread(target=download, daemon=True)
            for thread in [*threads, receiver]:
                thread.start()
            for thread in threads:
                thread.join(timeout)
            receiver.join(timeout)
        cpu = (
            sum(
                found[2]
                for pid in filter(str.isdigit, os.listdir("/proc"))
                if (found := _stat(pid)) is not None and found[1] == proc.pid
            )
            if os.path.isdir("/proc")
            else None
        )
    finally:
        children.kill("capacity-emulator")
        del children.procs["capacity-emulator"]
    first = uploaded.get("_first")
    last = max(done.values()) if done else None
    elapsed = (last - first) if first is not None and last is not None else None
    return {
        "images": images,
        "completed": len(done),
        "errors": errors[:10],
        "clients": clients,
        "elapsed": round(elapsed, 2) if elapsed else None,
        "images_per_s": round(len(done) / elapsed, 3) if elapsed else None,
        "emulator_cpu_s": round(cpu, 1) if cpu is not None else None,
    }


def _replace(argv: list[str], flag: str, value: str) -> list[str]:
    out = list(argv)
    if flag in out:
        out[out.index(flag) + 1] = value
    else:
        out += [flag, value]
    return out
