"""What the edge and the workers both need: settings parsing, Redis layout, stubs, logging."""
