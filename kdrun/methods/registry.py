"""The methods' registry: `method=NAME`; each method's file registers its class."""
from kdrun.registry import Registry

METHODS: Registry = Registry("method", "method")
