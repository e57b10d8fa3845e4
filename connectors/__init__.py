"""Connectors: Kafka source and sink, codecs and scanners, dead letters, the embedded broker."""

__all__: list[str] = []
