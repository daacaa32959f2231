"""A small shop catalogue showing imagekit-bgremove end to end (see README, "Run the example")."""
