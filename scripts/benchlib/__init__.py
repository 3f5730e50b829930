"""scripts/bench: unistore against its peers (podman, skopeo, cfsctl). The command is
scripts/bench; its docstring says what it measures."""
