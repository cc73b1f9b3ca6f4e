"""The streaming knowledge base: events, chunking, embeddings, hot/cold store, worker, aging.

The ingest worker does not know the gateway; they meet at the store and the wire contract.
"""
