"""Download: fetching a bundle's artifacts by digest, chunked and resumable (``fetcher.BlobFetcher``)."""
