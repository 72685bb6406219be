"""The cache: its schema, fingerprint, one writer and one reader (`store.reader.CacheReader`, `open_cache`,
`read_attrs`), and `info --verify`. Importing the package imports none of them, so the CLI can check
`--store` (`store.lossy.parse`) without zarr."""
