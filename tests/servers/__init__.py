"""Private instances of real mail servers (Postfix, Dovecot) that a test starts and stops."""
