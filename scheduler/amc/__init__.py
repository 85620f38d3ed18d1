"""The AMC side: authentication, the API client, error classes and a simulator."""
