"""The road from a prepared issue to the wire: build, throttle, transport, journal."""
