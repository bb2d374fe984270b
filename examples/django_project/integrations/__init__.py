"""Code that is not a Django app; its handlers are listed in REGISTRY_MODULES."""
