"""Use cases of sending: prepare a send, deliver it from this process."""
