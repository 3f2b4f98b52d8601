"""What comes back: bounces, complaints and auto-replies, read from a returned message's bytes
(parse) or a provider's event (webhooks) and classified by RFC 3463 status (kinds); pure, no I/O."""
