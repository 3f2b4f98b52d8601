"""Provider webhooks (Amazon SES through SNS, Postmark, Mailgun): verified and read, no I/O."""
