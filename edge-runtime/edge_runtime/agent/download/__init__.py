"""Download: fetching a bundle's artifacts by digest, resumable, over any link that moves bytes
(``fetcher.BlobFetcher``), with the chunk size adapted to the link (``chunking.ChunkSizer``) and the artifact in
flight's progress for the reported state (``progress.DownloadProgress``)."""
