"""Outgoing webhooks: signing (and its verification, for receivers) and the HTTP sender."""
