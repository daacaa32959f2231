"""The ImageKit emulator's well-known development credentials (``python -m imagekit_emulator``
starts with them): with only ``EMULATOR_URL`` set, the app talks to it with these. They only ever
unlock a local emulator; a test keeps them equal to the emulator's own."""

EMULATOR_PRIVATE_KEY = "private_emulator_key"
EMULATOR_WEBHOOK_SECRET = "whsec_emulator_secret"
