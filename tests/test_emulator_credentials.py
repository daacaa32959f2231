"""The emulator's well-known development credentials agree with the ones the app uses when
only an emulator URL is configured."""

from imagekit_bgremove import defaults
from imagekit_emulator import config


def test_well_known_credentials_agree_with_the_app_defaults():
    assert config.DEFAULT_PRIVATE_KEY == defaults.EMULATOR_PRIVATE_KEY
    assert config.DEFAULT_WEBHOOK_SECRET == defaults.EMULATOR_WEBHOOK_SECRET
