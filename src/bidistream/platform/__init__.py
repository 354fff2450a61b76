"""platform layer: endpoints, store, router, runtimes."""
