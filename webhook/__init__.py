"""kdns-webhook: service-link environment variables injected at admission, with the kubelet's semantics."""
