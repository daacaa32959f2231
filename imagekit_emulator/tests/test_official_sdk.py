"""ImageKit's official Python SDK (PyPI ``imagekitio``) drives the emulator as it drives
ImageKit: upload with remove-bg, file details, versions, update, and the callback unwrapped
(its Standard Webhooks signature verified) by the SDK itself."""

from __future__ import annotations

import pytest

from imagekit_emulator.testing import CallbackReceiver, running_emulator, sample_image

imagekitio = pytest.importorskip("imagekitio")
standardwebhooks = pytest.importorskip("standardwebhooks")


@pytest.fixture(scope="module")
def ik():
    with running_emulator() as emulator:
        yield emulator


@pytest.fixture
def sdk(ik):
    client = imagekitio.ImageKit(private_key=ik.private_key, base_url=ik.url, max_retries=0)
    yield client
    client.close()


def test_the_sdk_uploads_reads_updates_and_unwraps_the_callback(ik, sdk):
    with CallbackReceiver() as hooks:
        uploaded = sdk.files.upload(
            file=("shoe.jpg", sample_image()),
            file_name="shoe.jpg",
            folder="/sdk",
            tags=["catalogue"],
            extensions=[{"name": "remove-bg", "options": {"bg_color": "ffffff"}}],
            webhook_url=hooks.url,
        )
        assert uploaded.file_id and uploaded.name.startswith("shoe")
        assert uploaded.extension_status.remove_bg == "pending"
        [callback] = hooks.wait_for(1, timeout=20)

    secret = ik.webhook_secrets[0]
    event = sdk.webhooks.unwrap(callback.body.decode(), headers=callback.headers, key=secret)
    # remove-bg's callback is not one of the SDK's typed account events; its body comes back as
    # sent, once the signature is verified.
    payload = event.to_dict()
    assert payload["service"] == "remove-bg" and payload["status"] == "SUCCESS", payload
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        sdk.webhooks.unwrap(callback.body.decode(), headers=callback.headers, key="whsec_wrong")

    details = sdk.files.get(uploaded.file_id)
    assert details.file_id == uploaded.file_id and details.tags == ["catalogue"]
    versions = sdk.files.versions.list(uploaded.file_id)
    assert len(versions) == 2  # the upload and remove-bg's result

    updated = sdk.files.update(uploaded.file_id, tags=["catalogue", "done"])
    assert updated.tags == ["catalogue", "done"]
    assert sdk.files.get(uploaded.file_id).tags == ["catalogue", "done"]
