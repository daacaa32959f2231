"""Values the Django app and the standalone emulator must agree on. Free of Django on purpose:
the emulator runs without it."""

# The credentials the bundled emulator starts with; they only ever unlock a local emulator.
EMULATOR_PRIVATE_KEY = "private_emulator_key"
EMULATOR_WEBHOOK_SECRET = "whsec_emulator_secret"
EMULATOR_URL = "http://127.0.0.1:8790"
