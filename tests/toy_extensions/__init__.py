"""Toy components, each one module, that tests register by importing them (and unregister afterwards)."""
