"""The contract: the hook specification, the kind Protocols, the registry, configuration and
its errors. Imports nothing above it."""
