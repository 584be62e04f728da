"""Running and scaling replicas on a cluster manager; the only package that imports Ray."""
