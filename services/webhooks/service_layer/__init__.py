"""Use cases of outgoing webhooks over ports (`ports.py`); no SQL, Kafka or HTTP client here."""
