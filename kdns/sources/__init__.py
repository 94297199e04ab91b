"""Sources turn the outside world (manifests, the API) into index events."""
