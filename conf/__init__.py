"""Default settings (epochs, paths) read by cfg.py."""
