"""Command groups of the `alloyml` CLI: each module registers its parsers and imports heavy libraries only
inside its handlers."""
