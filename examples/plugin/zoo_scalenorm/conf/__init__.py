"""Config package of the plugin: zoo adds it to Hydra's search path through the entry point."""
