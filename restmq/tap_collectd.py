"""The `collectd` twistd plugin: restmq plus the collectd frontend (see restmq.tap)."""
from restmq.tap import CollectdOptions as Options, makeCollectdService as makeService

__all__ = ["Options", "makeService"]
