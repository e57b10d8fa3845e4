"""Runners: in-process, one Ray actor per node, the Kafka binding, replay."""
