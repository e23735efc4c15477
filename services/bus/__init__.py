"""The Bluesky 0MQ bus: subscription and safe decoding of documents."""
