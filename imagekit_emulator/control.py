"""The ``/_emulator/...`` control endpoints (no auth, never faulted, never logged): health,
state (the ground truth), reset, faults and wait-idle."""

from __future__ import annotations

from .calls import Call, Reply
from .errors import bad_request
from .faults import FaultsError
from .version import VERSION


def health(call: Call) -> Reply:
    emulator = call.emulator
    return Reply(
        200,
        {
            "emulator": True,
            "version": VERSION,
            "url": emulator.url,
            "urlEndpoint": emulator.url_endpoint,
            "timeScale": emulator.config.time_scale,
        },
    )


def state(call: Call) -> Reply:
    return Reply(200, call.emulator.state())


def reset(call: Call) -> Reply:
    call.emulator.reset()
    return Reply(200, {"reset": True})


def get_faults(call: Call) -> Reply:
    return Reply(200, call.emulator.injector.state())


def put_faults(call: Call) -> Reply:
    data = call.json_body()
    try:
        call.emulator.injector.update(data or {})
    except FaultsError as exc:
        raise bad_request("Invalid faults.", errors=exc.errors, help_text=False) from None
    return Reply(200, call.emulator.injector.state())


def delete_faults(call: Call) -> Reply:
    call.emulator.injector.set(None)
    return Reply(200, call.emulator.injector.state())


def wait_idle(call: Call) -> Reply:
    try:
        timeout = min(float(call.request.args.get("timeout", "10")), 120.0)
    except ValueError:
        raise bad_request("timeout must be a number of seconds", help_text=False) from None
    idle = call.emulator.wait_idle(timeout)
    return Reply(200, {"idle": idle, "activity": call.emulator.activity.snapshot()})
