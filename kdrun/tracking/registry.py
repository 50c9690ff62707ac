"""The trackers' registry: `logger=NAME`; each tracker's file registers its class."""
from kdrun.registry import Registry

TRACKERS: Registry = Registry("tracker", "logger")
