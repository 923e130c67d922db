"""One module per suite; each exposes ``run(h, s) -> rows`` (collective) given a ``Harness``."""
