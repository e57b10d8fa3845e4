"""Connectors: Kafka source and sink, codecs, in-memory connectors, the embedded broker."""

__all__: list[str] = []
