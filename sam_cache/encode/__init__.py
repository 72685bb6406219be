"""The frozen image encoder and the embed stage that runs it once over every tile into the cache."""
