"""Data: the procedural glyph set, WebDataset shards with a class index, the class-driven sampler and loaders."""
