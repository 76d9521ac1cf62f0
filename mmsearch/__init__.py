"""What encoders, indexer and search share: the error hierarchy (mmsearch.errors)."""
