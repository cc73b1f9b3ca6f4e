"""Configuration data: intents, journeys, freshness profiles, the sample knowledge base."""
