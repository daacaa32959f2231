"""Remove image backgrounds in Django through ImageKit.io's remove-bg extension."""

__version__ = "0.1.0"
