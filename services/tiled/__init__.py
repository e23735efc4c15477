"""Writing to Tiled: the durable spool, the record applier and the embedded server config."""
